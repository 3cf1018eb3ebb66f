from setuptools import find_packages
from setuptools import setup

import kolibri_sync_extras_plugin

with open("README.md") as readme:
    long_description = readme.read()

setup(
    name="kolibri-sync-extras-plugin",
    version=kolibri_sync_extras_plugin.__version__,
    description="Runs Kolibri's server-side facility sync stages in background jobs",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(
        include=["kolibri_sync_extras_plugin", "kolibri_sync_extras_plugin.*"]
    ),
    include_package_data=True,
    python_requires=">=3.6",
    install_requires=["kolibri>=0.16,<0.20"],
    entry_points={
        "kolibri.plugins": [
            "kolibri_sync_extras_plugin = kolibri_sync_extras_plugin",
        ]
    },
    classifiers=[
        "Framework :: Django",
        "Programming Language :: Python :: 3",
    ],
)
