"""
The check made on each client poll of a background stage: whether the job serving
it can still settle it.

Kolibri's job hook settles a stage when its job fails or is cancelled through job
storage; this catches what the hook cannot see: a job row that vanished, and a
worker process that died without marking its job.
"""

import logging
import socket

from django.utils import timezone
from kolibri.core.tasks.exceptions import JobNotFound
from kolibri.core.tasks.job import State
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .errors import WorkerGone
from .jobs import job_id_for
from .jobs import settle_for_job_state

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
    Whether the worker process that took a RUNNING job has died on this host (killed,
    out of memory) without marking it: Kolibri only requeues such a job when its
    workers next start, and a client is polling now.

    :type orm_job: kolibri.core.tasks.models.Job
    :rtype: bool
    """
    from morango.utils import pid_exists

    if orm_job.state != State.RUNNING or not orm_job.worker_process:
        return False
    if orm_job.worker_host and orm_job.worker_host != socket.gethostname():
        return False
    try:
        return not pid_exists(int(orm_job.worker_process))
    except ValueError:
        return False


def _waiting_stage(transfer_session_id):
    """
    :return: The stage and last activity of an active transfer session whose stage
        waits on a job, or ``None``
    :rtype: dict|None
    """
    return (
        TransferSession.objects.filter(
            id=transfer_session_id,
            active=True,
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
    - the job is RUNNING in a worker process of this host that no longer exists:
      the job is marked FAILED, so it is not requeued behind the client's back.

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
        job_state = job_storage.get_orm_job(job_id).state
    return settle_for_job_state(transfer_session_id, stage, job_id, job_state)
