"""
Bookkeeping between transfer sessions and the Kolibri jobs that run their stages.

Nothing here is stored beside Kolibri's job storage: a stage's job id is derived
from the transfer session and the stage, so at most one job serves a stage however
often, or however concurrently, the client asks for it; the job's kwargs and
metadata name the session it serves.
"""

import logging
import threading
import uuid

from django.core.signals import request_finished
from django.core.signals import request_started
from django.utils import timezone
from kolibri.core.tasks.job import State
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .errors import WorkerGone
from .progress import describe

logger = logging.getLogger(__name__)

__all__ = [
    "job_id_for",
    "stage_status_for_job_state",
    "settle_stage",
    "schedule_background_stage",
    "settle_from_job",
    "check_background_stage",
    "worker_is_gone",
]

# a fixed namespace, so a stage's job id is the same in every process and release
_JOB_ID_NAMESPACE = uuid.UUID("5c1f2a47-3b1e-4a55-9d0c-7f0a2b6e9c41")

#: Job states after which the job will not touch the stage again.
FINISHED_JOB_STATES = frozenset((State.COMPLETED, State.FAILED, State.CANCELED))

# A COMPLETED job has already settled its stage itself, or found that the stage was
# no longer waiting on it (a closed session, a stage moved on): either way the job's
# state says nothing more about the stage.
_STAGE_STATUS_BY_JOB_STATE = {
    State.FAILED: transfer_statuses.ERRORED,
    State.CANCELED: transfer_statuses.ERRORED,
    # the job is gone from job storage before it finished
    None: transfer_statuses.ERRORED,
}


def job_id_for(transfer_session_id, stage):
    """
    :param transfer_session_id: A transfer session id (hex)
    :param stage: A ``transfer_stages`` constant
    :return: The id of the one job that runs this stage of this transfer session
    :rtype: str
    """
    return uuid.uuid5(_JOB_ID_NAMESPACE, "{}:{}".format(transfer_session_id, stage)).hex


def stage_status_for_job_state(job_state):
    """
    The one mapping from a Kolibri job state to the status its stage should end in.

    :param job_state: A ``kolibri.core.tasks.job.State`` value, or ``None`` for a job
        that is no longer in job storage
    :return: A ``transfer_statuses`` constant, or ``None`` when the job's state leaves
        the stage to the job (still waiting or running, or completed)
    :rtype: str|None
    """
    return _STAGE_STATUS_BY_JOB_STATE.get(job_state)


def settle_stage(transfer_session_id, stage, stage_status):
    """
    Finish a background stage with ``stage_status``, but only while the transfer
    session is still at that stage and waiting on it: a late or repeated report
    never rewrites a stage that has already been settled or left behind.

    :return: Whether the transfer session was updated
    :rtype: bool
    """
    updated = TransferSession.objects.filter(
        id=transfer_session_id,
        transfer_stage=stage,
        transfer_stage_status__in=transfer_statuses.IN_PROGRESS_STATES,
    ).update(transfer_stage_status=stage_status, last_activity_timestamp=timezone.now())
    return bool(updated)


def settle_from_job(job, job_state):
    """
    Settle the stage a job serves from the job's state, if that state is final.

    Called by the plugin's job hook whenever job storage changes a job of ours, so a
    job that failed, was cancelled, or was cleared before finishing ends its stage
    as ERRORED and the polling client stops instead of waiting forever.

    :type job: kolibri.core.tasks.job.Job
    :param job_state: The job's new state, or ``None`` if it was removed unfinished
    """
    stage_status = stage_status_for_job_state(job_state)
    if stage_status is None:
        return
    transfer_session_id = job.kwargs.get("transfer_session_id")
    stage = job.kwargs.get("stage")
    if settle_stage(transfer_session_id, stage, stage_status):
        logger.error(
            "Stage %s of transfer session %s is %s: its job %s is %s",
            stage,
            transfer_session_id,
            stage_status,
            job.job_id,
            job_state or "gone from job storage",
        )


def _hex_or_none(value):
    return getattr(value, "hex", value)


def _job_metadata(context):
    """
    What Kolibri's task list shows about a background stage.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: dict
    """
    from kolibri.core.auth.models import Facility
    from kolibri.core.auth.sync_event_hook_utils import get_dataset_id

    dataset_id = get_dataset_id(context)
    facility = (
        Facility.objects.filter(dataset_id=dataset_id).values("id", "name").first()
        or {}
    )
    metadata = {
        "type": "SYNC_BACKGROUND_STAGE",
        "stage": context.stage,
        "direction": "push" if context.is_push else "pull",
        "transfer_session_id": context.transfer_session.id,
        "sync_session_id": context.sync_session.id,
        "dataset_id": dataset_id,
        "facility_id": facility.get("id"),
        "facility_name": facility.get("name"),
        "client_instance_id": _hex_or_none(context.sync_session.client_instance_id),
    }
    # the tasks API shows no status_fn text, so the job carries its own
    metadata["status_text"] = describe(metadata, State.QUEUED)
    return metadata


def _request_data_for_stage(context):
    """
    :return: The parts of the client's request data the stage will read in the job
    :rtype: dict
    """
    data = getattr(context.request, "data", None) or {}
    return {key: data[key] for key in ("client_fsic",) if key in data}


def stage_job_request(context):
    """
    The arguments to enqueue the job for the context's current stage with.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: dict
    """
    metadata = _job_metadata(context)
    return dict(
        job_id=job_id_for(context.transfer_session.id, context.stage),
        facility_id=metadata["facility_id"],
        extra_metadata=metadata,
        kwargs=dict(
            transfer_session_id=context.transfer_session.id,
            stage=context.stage,
            request_data=_request_data_for_stage(context),
            capabilities=sorted(context.capabilities),
        ),
    )


def enqueue_stage_job(job_request):
    """
    Enqueue the stage job unless the job serving that stage is already waiting or
    running. A finished job with the same id is replaced: that is a new attempt.

    :param job_request: See :func:`stage_job_request`
    :return: Whether a job was enqueued
    :rtype: bool
    """
    from kolibri.core.tasks.exceptions import JobNotFound
    from kolibri.core.tasks.main import job_storage

    from .tasks import run_background_stage

    try:
        existing = job_storage.get_job(job_request["job_id"])
    except JobNotFound:
        existing = None
    if existing is not None and existing.state not in FINISHED_JOB_STATES:
        return False
    run_background_stage.enqueue(**job_request)
    return True


#: How long a stage may show STARTED with no job in job storage before it errors:
#: the job is enqueued just after the request that started the stage has ended.
MISSING_JOB_GRACE_SECONDS = 10


def worker_is_gone(orm_job):
    """
    Whether the worker process that took a RUNNING job has died on this host (killed,
    out of memory) without marking it: Kolibri only requeues such a job when its
    workers next start, and a client is polling now.

    :type orm_job: kolibri.core.tasks.models.Job
    :rtype: bool
    """
    import socket

    from morango.utils import pid_exists

    if orm_job.state != State.RUNNING or not orm_job.worker_process:
        return False
    if orm_job.worker_host and orm_job.worker_host != socket.gethostname():
        return False
    try:
        return not pid_exists(int(orm_job.worker_process))
    except ValueError:
        return False


def check_background_stage(transfer_session_id):
    """
    Settle a background stage whose job can no longer settle it, so a polling client
    stops with an error rather than polling forever. Called on each client poll.

    - the job is gone from job storage (past a short grace for its enqueueing),
    - the job FAILED or was CANCELED (normally the job hook has already done this),
    - the job is RUNNING in a worker process of this host that no longer exists:
      the job is marked FAILED, so it is not requeued behind the client's back.

    :param transfer_session_id: The polled transfer session's id
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    from kolibri.core.tasks.exceptions import JobNotFound
    from kolibri.core.tasks.main import job_storage

    session = (
        TransferSession.objects.filter(
            id=transfer_session_id,
            active=True,
            transfer_stage_status=transfer_statuses.STARTED,
        )
        .values("transfer_stage", "last_activity_timestamp")
        .first()
    )
    if session is None:
        return None
    stage = session["transfer_stage"]
    job_id = job_id_for(transfer_session_id, stage)
    try:
        orm_job = job_storage.get_orm_job(job_id)
    except JobNotFound:
        waited = timezone.now() - session["last_activity_timestamp"]
        if waited.total_seconds() < MISSING_JOB_GRACE_SECONDS:
            return None
        job_state = None
    else:
        if worker_is_gone(orm_job):
            job_storage.mark_job_as_failed(
                job_id,
                WorkerGone(
                    "worker process {} died while running the stage".format(
                        orm_job.worker_process
                    )
                ),
                "",
            )
        job_state = job_storage.get_orm_job(job_id).state
    stage_status = stage_status_for_job_state(job_state)
    if stage_status is not None and settle_stage(
        transfer_session_id, stage, stage_status
    ):
        logger.error(
            "Stage %s of transfer session %s is %s: its job %s is %s",
            stage,
            transfer_session_id,
            stage_status,
            job_id,
            job_state or "gone from job storage",
        )
        return stage_status
    return None


# Jobs wait for the end of the request that asked for them: morango's PATCH view
# saves the whole transfer session row after the controller returns, which would
# overwrite the status of a job that had already finished.
_request_state = threading.local()


def _on_request_started(environ=None, **kwargs):
    _request_state.jobs = []
    transfer_session_id = _polled_transfer_session_id(environ or {})
    if transfer_session_id is not None:
        try:
            check_background_stage(transfer_session_id)
        except Exception:
            # a failed check must not fail the client's poll; the next poll retries it
            logger.exception(
                "Could not check the background stage of transfer session %s",
                transfer_session_id,
            )


def _polled_transfer_session_id(environ):
    """
    :return: The transfer session a client is polling with this request, if it is a
        ``GET`` of morango's transfer session endpoint
    :rtype: str|None
    """
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") != "GET" or "/transfersessions/" not in path:
        return None
    from django.urls import Resolver404
    from django.urls import resolve

    try:
        match = resolve(path)
    except Resolver404:
        return None
    if match.url_name != "transfersessions-detail":
        return None
    return match.kwargs.get("pk")


def _on_request_finished(**kwargs):
    job_requests = getattr(_request_state, "jobs", None)
    _request_state.jobs = None
    for job_request in job_requests or ():
        _enqueue_or_fail_stage(job_request)


def _enqueue_or_fail_stage(job_request):
    stage_kwargs = job_request["kwargs"]
    try:
        enqueue_stage_job(job_request)
    except Exception:
        logger.exception(
            "Could not enqueue job %s for stage %s of transfer session %s",
            job_request["job_id"],
            stage_kwargs["stage"],
            stage_kwargs["transfer_session_id"],
        )
        settle_stage(
            stage_kwargs["transfer_session_id"],
            stage_kwargs["stage"],
            transfer_statuses.ERRORED,
        )


def connect_request_signals():
    """Track request boundaries so stage jobs start after their request ends."""
    request_started.connect(
        _on_request_started, dispatch_uid="kolibri_sync_extras_request_started"
    )
    request_finished.connect(
        _on_request_finished, dispatch_uid="kolibri_sync_extras_request_finished"
    )


def schedule_background_stage(context):
    """
    Arrange for a Kolibri job to run the context's current stage.

    Inside a request the job is enqueued once the request has finished; outside one
    (no request is being served on this thread) it is enqueued at once.

    :type context: morango.sync.context.LocalSessionContext
    """
    job_request = stage_job_request(context)
    pending = getattr(_request_state, "jobs", None)
    if pending is None:
        _enqueue_or_fail_stage(job_request)
    else:
        pending.append(job_request)
    logger.info(
        "Stage %s of transfer session %s will run in background job %s",
        context.stage,
        context.transfer_session.id,
        job_request["job_id"],
    )
