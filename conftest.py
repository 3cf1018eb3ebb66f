"""
Test set-up shared by the whole suite.

Kolibri vendors Django and morango inside ``kolibri/dist``; importing ``kolibri``
puts them on ``sys.path``, so it must happen before pytest-django looks for Django.
Each run gets its own KOLIBRI_HOME with this plugin enabled.
"""

import os
import tempfile

os.environ["KOLIBRI_HOME"] = tempfile.mkdtemp(prefix="sync-extras-test-home-")
os.environ["KOLIBRI_PLUGIN_ENABLE"] = "kolibri_sync_extras_plugin"
os.environ.setdefault(
    "DJANGO_SETTINGS_MODULE", "kolibri.deployment.default.settings.test"
)

import kolibri  # noqa: E402,F401

# isort: split
from kolibri.plugins import config as plugin_config  # noqa: E402

# Kolibri before 0.18 ignores KOLIBRI_PLUGIN_ENABLE: enable it in the home as well
plugin_config.add_plugin("kolibri_sync_extras_plugin")

# isort: split
import django  # noqa: E402

# pytest-django looked for Django before the import above made it importable
django.setup()

# session-wide Kolibri homes for the tests that start real Kolibri processes
pytest_plugins = ["test.lab_fixtures"]
