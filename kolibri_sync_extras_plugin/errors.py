"""The errors this plugin raises, so callers can tell expected failures apart."""

from django.core.exceptions import ImproperlyConfigured


class SyncExtrasError(Exception):
    """Base class for every error raised by this plugin."""


class InvalidSyncOption(SyncExtrasError, ImproperlyConfigured):
    """A ``[Sync]`` option holds a value the plugin cannot act on."""


class BackgroundStageError(SyncExtrasError):
    """A background stage could not run to completion."""


class StageNoLongerAwaited(BackgroundStageError):
    """
    The transfer session moved on, closed or vanished before its background job ran,
    so the job must leave the data alone.
    """


class WorkerGone(BackgroundStageError):
    """The worker process running a background stage died without finishing it."""
