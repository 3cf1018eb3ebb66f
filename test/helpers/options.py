"""The plugin's ``[Sync]`` options, set for a block of a test."""

import contextlib

from kolibri.utils.conf import OPTIONS


@contextlib.contextmanager
def sync_options(**values):
    """Set ``[Sync]`` options for the duration of a block, as options.ini would."""
    section = OPTIONS["Sync"]
    saved = {key: section[key] for key in values}
    section.update(values)
    try:
        yield
    finally:
        section.update(saved)
