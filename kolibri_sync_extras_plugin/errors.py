"""The errors this plugin raises, so callers can tell expected failures apart."""

from django.core.exceptions import ImproperlyConfigured
from rest_framework import status
from rest_framework.exceptions import APIException


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


class RequestBudgetSpent(SyncExtrasError):
    """
    A stage run in the request took longer than the request may: its pieces so
    far are committed, and a job does the rest.
    """


class StageJobLimitReached(SyncExtrasError, APIException):
    """
    A stage was asked for while its client, or all clients together, already had as
    many stage jobs waiting or running as ``[Sync]`` allows. Raised through the
    client's request, so the client sees an HTTP 503 whose detail names the cap.
    """

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "stage_job_limit_reached"


class UnsupportedMorango(SyncExtrasError):
    """
    The installed morango is not a version whose internals the plugin's piecewise
    stages mirror; morango's own one-transaction stages must run instead.
    """
