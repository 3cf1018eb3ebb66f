"""Kolibri's options (the plugin's ``[Sync]`` ones and others), set for a block of a test."""

import contextlib

from kolibri.utils.conf import OPTIONS


@contextlib.contextmanager
def kolibri_options(section, **values):
    """Set options of ``section`` for the duration of a block, as options.ini would."""
    options = OPTIONS[section]
    saved = {key: options[key] for key in values}
    options.update(values)
    try:
        yield
    finally:
        options.update(saved)


def sync_options(**values):
    """Set ``[Sync]`` options for the duration of a block, as options.ini would."""
    return kolibri_options("Sync", **values)
