"""
Where a background stage meets the HTTP request that asked for it.

A stage's job, reserved while the request runs (see :mod:`.limits`), is queued
only once that request has finished: morango's PATCH view saves the whole
transfer session row after its controller returns, which would overwrite the
status of a job that had already finished. A client's poll (``GET`` of a transfer
session) first checks that the stage's job can still settle it, every few
seconds of polls (see :mod:`.poll`), and is held a moment while a job of this
process runs the stage (see :mod:`..poll_hold`).
"""

import logging
import threading
import uuid

from django.core.signals import request_finished
from django.core.signals import request_started

from .. import requests_in_flight
from ..poll_hold import hold_poll_while_stage_runs
from ..poll_hold import stage_held_here
from ..stage_status import error_stage
from .enqueue import enqueue_stage_job
from .enqueue import release_reserved_job
from .morango_urls import morango_endpoint
from .poll import check_background_stage
from .poll import check_is_due

logger = logging.getLogger(__name__)

__all__ = ["connect_request_signals", "schedule_background_stage"]

# per thread: the stage jobs the request being served will enqueue when it ends,
# or None outside a request
_request_state = threading.local()


def _on_request_started(environ=None, **kwargs):
    # stage jobs writing in pieces leave SQLite's lock free while it is in flight
    requests_in_flight.request_started()
    _request_state.jobs = []
    transfer_session_id = _polled_transfer_session_id(environ or {})
    if transfer_session_id is None:
        return
    if check_is_due(transfer_session_id):
        try:
            check_background_stage(transfer_session_id)
        except Exception:
            # a failed check must not fail the client's poll; a poll 5 s on retries it
            logger.exception("Could not check the background stage of a polled session")
    try:
        hold_poll_while_stage_runs(transfer_session_id)
    except Exception:
        # the poll is answered at once, as it would be without the hold
        logger.exception("Could not hold the poll of a background stage")


def _polled_transfer_session_id(environ):
    """
    :return: The transfer session a client is polling with this request, if it is a
        ``GET`` of morango's transfer session endpoint
    :rtype: str|None
    """
    kwargs = morango_endpoint(environ, "GET", "transfersessions-detail")
    return None if kwargs is None else _transfer_session_id(kwargs.get("pk"))


def _transfer_session_id(pk):
    """
    :return: ``pk`` as morango stores a transfer session id (32 hex digits), or
        ``None`` if it cannot be one: anyone on the network can send any path, and
        morango's view answers 404 to such a request without the plugin's help
    :rtype: str|None
    """
    try:
        return uuid.UUID(pk).hex
    except (TypeError, ValueError, AttributeError):
        return None


def _on_request_finished(**kwargs):
    job_requests = getattr(_request_state, "jobs", None)
    _request_state.jobs = None
    try:
        for job_request in job_requests or ():
            _enqueue_or_fail_stage(job_request)
    finally:
        requests_in_flight.request_finished()


def _enqueue_or_fail_stage(job_request):
    stage_kwargs = job_request["kwargs"]
    try:
        enqueue_stage_job(job_request)
    except Exception:
        logger.exception(
            "Could not enqueue job %s for stage %s of transfer session %s; the "
            "stage is errored and the client syncs again later: check that job "
            "storage's database is writable",
            job_request["job_id"],
            stage_kwargs["stage"],
            job_request["transfer_session_id"],
        )
        error_stage(job_request["transfer_session_id"], stage_kwargs["stage"])
        try:
            release_reserved_job(job_request["job_id"])
        except Exception:
            logger.debug("Could not remove the reserved job either", exc_info=True)


def connect_request_signals():
    """Track request boundaries so stage jobs start after their request ends."""
    request_started.connect(
        _on_request_started, dispatch_uid="kolibri_sync_extras_request_started"
    )
    request_finished.connect(
        _on_request_finished, dispatch_uid="kolibri_sync_extras_request_finished"
    )


def schedule_background_stage(job_request):
    """
    Arrange for the reserved job of a stage to be queued (see
    :func:`~.limits.reserve_within_limits`).

    Inside a request the job is queued once the request has finished; outside one
    (no request is being served on this thread) it is queued at once.

    :param job_request: See :func:`~.enqueue.stage_job_request`
    """
    stage_held_here(job_request["transfer_session_id"])
    pending = getattr(_request_state, "jobs", None)
    if pending is None:
        _enqueue_or_fail_stage(job_request)
    else:
        pending.append(job_request)
    logger.info(
        "Stage %s of transfer session %s will run in background job %s",
        job_request["kwargs"]["stage"],
        job_request["transfer_session_id"],
        job_request["job_id"],
    )
