"""
Which Kolibri job serves which background stage, and how a job's end settles it.

Nothing is stored beside Kolibri's job storage: a stage's job id is derived from
the transfer session and the stage, so at most one job serves a stage however
often, or however concurrently, the client asks for it; the job's kwargs name the
session it serves. Settling is a conditional UPDATE, so a late or repeated report
never rewrites a stage that is already settled.

Enqueueing lives with the task in :mod:`.tasks`; the request boundary in
:mod:`.request_boundary`; the check made on each client poll in :mod:`.health`.
"""

import logging
import uuid

from django.utils import timezone
from kolibri.core.tasks.job import State
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

logger = logging.getLogger(__name__)

__all__ = [
    "SYNC_EXTRAS_QUEUE",
    "RUN_STAGE_TASK",
    "FINISHED_JOB_STATES",
    "job_id_for",
    "stage_status_for_job_state",
    "settle_stage",
    "settle_from_job",
]

#: The Kolibri job queue the plugin's stage jobs run in.
SYNC_EXTRAS_QUEUE = "sync_extras"
#: The registered name of the task that runs a stage (see :mod:`.tasks`).
RUN_STAGE_TASK = "kolibri_sync_extras_plugin.tasks.run_background_stage"

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


def settle_for_job_state(transfer_session_id, stage, job_id, job_state):
    """
    Settle a stage from the state of the job that serves it, if that state is final
    for the stage, and log it.

    :param job_state: The job's state, or ``None`` if it is gone from job storage
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    stage_status = stage_status_for_job_state(job_state)
    if stage_status is None or not settle_stage(
        transfer_session_id, stage, stage_status
    ):
        return None
    logger.error(
        "Stage %s of transfer session %s is %s: its job %s is %s",
        stage,
        transfer_session_id,
        stage_status,
        job_id,
        job_state or "gone from job storage",
    )
    return stage_status


def settle_from_job(job, job_state):
    """
    Settle the stage a job serves from the job's state, if that state is final.

    Called by the plugin's job hook whenever job storage changes a job of ours, so a
    job that failed, was cancelled, or was cleared before finishing ends its stage
    as ERRORED and the polling client stops instead of waiting forever.

    :type job: kolibri.core.tasks.job.Job
    :param job_state: The job's new state, or ``None`` if it was removed unfinished
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    return settle_for_job_state(
        job.kwargs.get("transfer_session_id"),
        job.kwargs.get("stage"),
        job.job_id,
        job_state,
    )
