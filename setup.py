import os
import re

from setuptools import find_packages
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def version():
    """
    The version set in the package's ``__init__.py``, read as text so that
    building the package does not need Kolibri (or anything else) installed.
    """
    match = re.search(
        r'^__version__ = "([^"]+)"$',
        read(os.path.join("kolibri_sync_extras_plugin", "__init__.py")),
        re.MULTILINE,
    )
    if match is None:
        raise RuntimeError("no __version__ in kolibri_sync_extras_plugin/__init__.py")
    return match.group(1)


def requirements():
    """The runtime requirements, kept in requirements.txt so pip -r sees the same."""
    lines = (
        line.split("#", 1)[0].strip() for line in read("requirements.txt").splitlines()
    )
    return [line for line in lines if line and not line.startswith("-")]


setup(
    name="kolibri-sync-extras-plugin",
    version=version(),
    description="Runs Kolibri's server-side facility sync stages in background jobs",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(
        include=["kolibri_sync_extras_plugin", "kolibri_sync_extras_plugin.*"]
    ),
    include_package_data=True,
    # datetime.fromisoformat needs 3.7; the code is linted for 3.8
    python_requires=">=3.8",
    install_requires=requirements(),
    entry_points={
        "kolibri.plugins": [
            "kolibri_sync_extras_plugin = kolibri_sync_extras_plugin",
        ]
    },
    classifiers=[
        "Framework :: Django",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
    ],
)
