"""
The check made on each client poll of a background stage: whether the job serving
it can still settle it.

Kolibri's job hook settles a stage when its job fails or is cancelled through job
storage; this catches what the hook cannot see: a job row that vanished, a worker
process that died without marking its job, and a stage put back to STARTED by a
repeated request after its job had settled it.
"""

import logging

from django.utils import timezone
from kolibri.core.tasks.exceptions import JobNotFound
from kolibri.core.tasks.job import Job
from kolibri.core.tasks.job import State
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .errors import WorkerGone
from .jobs import job_id_for
from .jobs import settle_for_job_state
from .jobs import settle_stage
from .workers import identity_of
from .workers import is_gone

logger = logging.getLogger(__name__)

__all__ = [
    "MISSING_JOB_GRACE_SECONDS",
    "worker_is_gone",
    "check_background_stage",
]

#: How long a stage may show STARTED with no job in job storage before it errors:
#: the job is enqueued just after the request that started the stage has ended.
MISSING_JOB_GRACE_SECONDS = 10


def worker_is_gone(orm_job):
    """
    Whether the worker process that took a RUNNING job has certainly died (killed,
    out of memory) without marking it: Kolibri only requeues such a job when its
    workers next start, and a client is polling now.

    Only the identity the job recorded as it started counts (see :mod:`.workers`):
    a worker in another pid namespace or on another host, or a job that recorded
    none, cannot be told dead from here and counts as alive.

    :type orm_job: kolibri.core.tasks.models.Job
    :rtype: bool
    """
    if orm_job.state != State.RUNNING:
        return False
    return is_gone(identity_of(orm_job.worker_extra))


def _waiting_stage(transfer_session_id):
    """
    :return: The stage and last activity of an active transfer session of which this
        instance is the server, whose stage waits on a job, or ``None``. A transfer
        session this instance runs as a client waits on another server, not on a
        job here.
    :rtype: dict|None
    """
    return (
        TransferSession.objects.filter(
            id=transfer_session_id,
            active=True,
            sync_session__is_server=True,
            transfer_stage_status=transfer_statuses.STARTED,
        )
        .values("transfer_stage", "last_activity_timestamp")
        .first()
    )


def check_background_stage(transfer_session_id):
    """
    Settle a background stage whose job can no longer settle it, so a polling client
    stops with an error rather than polling forever. Called on each client poll.

    - the job is gone from job storage (past a short grace for its enqueueing),
    - the job FAILED or was CANCELED (normally the job hook has already done this),
    - the job is RUNNING in a worker process that certainly no longer exists (see
      :func:`worker_is_gone`): the job is marked FAILED, so it is not requeued
      behind the client's back,
    - the job COMPLETED but the stage still shows STARTED: a repeated request
      from the client saved the row it had read before the job settled the stage.
      The stage gets the job's outcome: COMPLETED if the job ran it, ERRORED if
      the job found it no longer waiting (nothing else will run it); a job that
      only gave its worker back to wait for its writer's turn is left alone.

    :param transfer_session_id: The polled transfer session's id
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    from kolibri.core.tasks.main import job_storage

    session = _waiting_stage(transfer_session_id)
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
            job_state = State.FAILED
        else:
            job_state = orm_job.state
        if job_state == State.COMPLETED:
            return _settle_from_completed_job(transfer_session_id, stage, orm_job)
    return settle_for_job_state(transfer_session_id, stage, job_id, job_state)


def _settle_from_completed_job(transfer_session_id, stage, orm_job):
    """
    :param orm_job: The completed job's row, as the poll read it
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    job_id = orm_job.id
    result = Job.from_json(orm_job.saved_job).result or {}
    if isinstance(result, dict) and result.get("waiting"):
        # a job waiting for its writer's turn is completed only until Kolibri
        # queues it again, a moment later (see :mod:`.writer_lock`)
        return None
    ran = isinstance(result, dict) and result.get("ran") is True
    stage_status = transfer_statuses.COMPLETED if ran else transfer_statuses.ERRORED
    if not settle_stage(transfer_session_id, stage, stage_status):
        return None
    logger.warning(
        "Stage %s of transfer session %s was STARTED again after its job %s had "
        "ended; settled it as %s",
        stage,
        transfer_session_id,
        job_id,
        stage_status,
    )
    return stage_status
