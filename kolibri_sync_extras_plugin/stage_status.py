"""
Which Kolibri job serves which background stage, what a stage job's result says,
and the one writer of a held stage's status.

Nothing is stored beside Kolibri's job storage: a stage's job id is derived from
the transfer session and the stage, so at most one job serves a stage however
often, or however concurrently, the client asks for it. The job names its stage
but not its session: morango's transfer session and buffer endpoints accept
anyone who knows a session id, and Kolibri's tasks API lists the kwargs and
metadata of jobs whose task is not registered (the plugin disabled or removed)
to any user. A job finds its session again by its own id, which is derived one
way from the session's (see :func:`open_sessions_by_job_id`).

Every write of ``transfer_stage_status`` the plugin makes is here, whoever asks
for it: the stage job when it ends (:mod:`.job.run`), the job hook when job
storage fails, cancels or clears a job (:mod:`.kolibri_plugin`), the check on a
client's poll (:mod:`.request.poll`), an enqueue that failed
(:mod:`.request.hooks`), the release before the plugin is disabled
(:mod:`.admin.disable`), and morango's own record of each stage it invokes,
which the plugin writes for it (:mod:`.stage_bookkeeping`). Settling is a
conditional UPDATE, so a late or repeated report never rewrites a stage that is
already settled. (A full save of a transfer session by another writer puts back
the status it finds in the database, never one of its own: see
:mod:`.session_saves`.)
"""

import logging
import uuid

from django.db import router
from django.db import transaction
from django.utils import timezone
from kolibri.core.tasks.job import State
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .poll_hold import stage_settled

logger = logging.getLogger(__name__)

__all__ = [
    "SYNC_EXTRAS_QUEUE",
    "RUN_STAGE_TASK",
    "FINISHED_JOB_STATES",
    "FIRST_ENQUEUED_KEY",
    "job_id_for",
    "BACKGROUND_STAGES",
    "open_sessions_by_job_id",
    "transfer_session_of_job",
    "ran_result",
    "not_run_result",
    "waiting_result",
    "is_waiting",
    "reason_not_run",
    "stage_status_for_job_state",
    "complete_stage",
    "error_stage",
    "error_abandoned_stage",
    "error_held_stages",
    "error_unstarted_stage",
    "settle_for_job_state",
    "settle_from_completed_job",
    "settle_from_job",
    "record_stage",
]

#: The Kolibri job queue the plugin's stage jobs run in.
SYNC_EXTRAS_QUEUE = "sync_extras"
#: The registered name of the task that runs a stage (see :mod:`.tasks`).
RUN_STAGE_TASK = "kolibri_sync_extras_plugin.tasks.run_background_stage"

# a fixed namespace, so a stage's job id is the same in every process and release
_JOB_ID_NAMESPACE = uuid.UUID("5c1f2a47-3b1e-4a55-9d0c-7f0a2b6e9c41")

#: The keys of a stage job's result (what the task returns, kept by job storage).
RESULT_STAGE = "stage"
RESULT_RAN = "ran"
RESULT_WAITING = "waiting"
RESULT_REASON = "reason"
RESULT_DURATION = "duration"
RESULT_RECORDS = "records"

#: The job metadata that keeps when a waiting job was first enqueued: each retry
#: moves the job's scheduled time, which the status command counts its age from.
FIRST_ENQUEUED_KEY = "first_enqueued_at"

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


#: Every stage the plugin can hold, in the order a sync reaches them.
BACKGROUND_STAGES = (
    transfer_stages.SERIALIZING,
    transfer_stages.QUEUING,
    transfer_stages.DEQUEUING,
    transfer_stages.DESERIALIZING,
    transfer_stages.CLEANUP,
)


def open_sessions_by_job_id(stages=BACKGROUND_STAGES, closed_since=None):
    """
    The job id of each stage of each transfer session this server serves and
    has not closed, with the session and the stage. Open sessions are the syncs in
    progress, so deriving their job ids costs little.

    :param stages: The stages to derive job ids for
    :param closed_since: Also the sessions closed since this time (for reports on
        jobs that have finished)
    :type closed_since: datetime.datetime|None
    :return: job id -> ``(transfer session id, stage)``
    :rtype: dict
    """
    from django.db.models import Q

    served = TransferSession.objects.filter(sync_session__is_server=True)
    wanted = Q(active=True)
    if closed_since is not None:
        wanted |= Q(last_activity_timestamp__gte=closed_since)
    session_ids = served.filter(wanted).values_list("id", flat=True)
    return {
        job_id_for(session_id, stage): (session_id, stage)
        for session_id in session_ids
        for stage in stages
    }


def transfer_session_of_job(job):
    """
    The transfer session a stage job serves, if it is still open.

    A job enqueued by release 1.0.0 names its session in its kwargs; a
    newer one is matched by its id against the open sessions' (see the module's
    docstring).

    :type job: kolibri.core.tasks.job.Job
    :return: The transfer session id, or ``None`` if no open session has this job
    :rtype: str|None
    """
    named = (job.kwargs or {}).get("transfer_session_id")
    if named:
        return named
    stage = (job.kwargs or {}).get("stage")
    stages = (stage,) if stage else BACKGROUND_STAGES
    session_id, _ = open_sessions_by_job_id(stages).get(job.job_id, (None, None))
    return session_id


# what a deployer looks at when a stage ended with its job in this state
_WHAT_TO_CHECK = {
    State.FAILED: "its traceback is in the workers' log and Kolibri's task list",
    State.CANCELED: "it was cancelled through Kolibri (the task list, or the "
    "plugin's release before it was disabled)",
    None: "something removed it from job storage, or it was never enqueued",
}


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


def ran_result(stage, duration, records):
    """The result of a job that ran its stage."""
    return {
        RESULT_STAGE: stage,
        RESULT_RAN: True,
        RESULT_DURATION: round(duration, 3),
        RESULT_RECORDS: records,
    }


def not_run_result(stage, reason):
    """The result of a job that found its stage no longer waiting on it."""
    return {RESULT_STAGE: stage, RESULT_RAN: False, RESULT_REASON: reason}


def waiting_result(stage, reason):
    """
    The result of a job that gave its worker back to wait for its writer's turn:
    Kolibri marks it completed with this result and queues it again a moment later.
    """
    return dict(not_run_result(stage, reason), **{RESULT_WAITING: True})


def _as_dict(result):
    return result if isinstance(result, dict) else {}


def is_waiting(result):
    """Whether a job's result says it only waits for its writer's turn."""
    return bool(_as_dict(result).get(RESULT_WAITING))


def has_run(result):
    """Whether a job's result says it ran its stage."""
    return _as_dict(result).get(RESULT_RAN) is True


def reason_not_run(result):
    """Why a job did not run its stage, if its result says it did not."""
    result = _as_dict(result)
    if result.get(RESULT_RAN) is False:
        return result.get(RESULT_REASON)
    return None


def complete_stage(transfer_session_id, stage):
    """A stage job ran the stage: its client goes on to the next one."""
    return _settle(transfer_session_id, stage, transfer_statuses.COMPLETED)


def error_stage(transfer_session_id, stage):
    """The stage failed, or nothing will run it: its client stops with an error."""
    return _settle(transfer_session_id, stage, transfer_statuses.ERRORED)


def error_abandoned_stage(transfer_session_id, stage):
    """
    End as errored a stage whose request died with its server process. Its last
    activity stays when the request was: the client's next sync, begun since,
    closes the session as one it supersedes (see
    :mod:`~kolibri_sync_extras_plugin.recovery.superseded`).

    :return: Whether the transfer session was updated
    :rtype: bool
    """
    return _settle(transfer_session_id, stage, transfer_statuses.ERRORED, touch=False)


def _held_stages():
    """
    The stages the plugin holds: this instance is the server of an active
    transfer session that shows STARTED. morango's own server operations finish a
    stage within the request, so only the plugin leaves one STARTED.
    """
    return TransferSession.objects.filter(
        active=True,
        sync_session__is_server=True,
        transfer_stage_status=transfer_statuses.STARTED,
    )


def held_stage(transfer_session_id):
    """
    :return: The stage and last activity of the transfer session, if it is one
        the plugin holds (see :func:`_held_stages`), or ``None``
    :rtype: dict|None
    """
    return (
        _held_stages()
        .filter(id=transfer_session_id)
        .values("transfer_stage", "last_activity_timestamp")
        .first()
    )


def error_held_stages():
    """
    End every stage the plugin holds as ERRORED, before its jobs are cleared: their
    clients stop with an error and sync again later.

    :return: How many stages were ended
    :rtype: int
    """
    held = _held_stages().values_list("id", "transfer_stage")
    return sum(error_stage(ts_id, stage) for ts_id, stage in held)


def _settle(transfer_session_id, stage, stage_status, touch=True):
    """
    Finish a background stage with ``stage_status``, but only while the transfer
    session is still at that stage and waiting on it: a late or repeated report
    never rewrites a stage that has already been settled or left behind.

    :param touch: Whether to record the settling as the session's last activity
    :return: Whether the transfer session was updated
    :rtype: bool
    """
    waiting = TransferSession.objects.filter(
        id=transfer_session_id,
        transfer_stage=stage,
        transfer_stage_status__in=transfer_statuses.IN_PROGRESS_STATES,
    )
    if not touch:
        updated = waiting.update(transfer_stage_status=stage_status)
    else:
        updated = waiting.update(
            transfer_stage_status=stage_status, last_activity_timestamp=timezone.now()
        )
    if updated:
        stage_settled(transfer_session_id)
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
    if stage_status is None or not _settle(transfer_session_id, stage, stage_status):
        return None
    logger.error(
        "Stage %s of transfer session %s is %s: its job %s is %s; %s; the client "
        "syncs again later",
        stage,
        transfer_session_id,
        stage_status,
        job_id,
        job_state or "gone from job storage",
        _WHAT_TO_CHECK.get(job_state, "see Kolibri's log"),
    )
    return stage_status


def settle_from_completed_job(transfer_session_id, stage, job_id, result):
    """
    Settle a stage still STARTED although its job COMPLETED: a repeated request
    from the client saved the row it had read before the job settled the stage.
    The stage gets the job's outcome: COMPLETED if the job ran it, ERRORED if the
    job found it no longer waiting (nothing else will run it); a job that only
    gave its worker back to wait for its writer's turn is left alone.

    :param result: The completed job's result
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    if is_waiting(result):
        return None
    stage_status = (
        transfer_statuses.COMPLETED if has_run(result) else transfer_statuses.ERRORED
    )
    if not _settle(transfer_session_id, stage, stage_status):
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


def error_unstarted_stage(transfer_session_id, stage, job_id, waited_seconds):
    """
    End a stage whose job no worker picked up within the bound
    (``STAGE_JOB_START_TIMEOUT``), saying what to start, so its client stops
    instead of polling for ever.

    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    if not error_stage(transfer_session_id, stage):
        return None
    logger.error(
        "Stage %s of transfer session %s is errored: its job %s waited %d s and no "
        "background worker picked it up, nor any other stage job. Start Kolibri's "
        "workers (`kolibri start`, or `kolibri services` beside a separate web "
        "server) so background stages run; the client syncs again later.",
        stage,
        transfer_session_id,
        job_id,
        waited_seconds,
    )
    return transfer_statuses.ERRORED


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
    transfer_session_id = transfer_session_of_job(job)
    if transfer_session_id is None:
        # the session is closed or gone: there is no stage left to settle
        return None
    return settle_for_job_state(
        transfer_session_id,
        job.kwargs.get("stage"),
        job.job_id,
        job_state,
    )


def record_stage(transfer_session, stage=None, stage_status=None):
    """
    morango's record of a transfer's stage, as :mod:`.stage_bookkeeping` writes it.
    Write ``stage``, ``stage_status`` and the time to the transfer session, and the
    time to its sync session, in one transaction. This is morango 0.19's
    ``TransferSession.update_state`` in a transaction, on every Kolibri line:
    morango before 0.19 saves both rows whole.

    :raises ValueError: If ``stage`` is behind the transfer session's, as morango
        refuses it
    """
    fields = ["last_activity_timestamp"]
    if stage is not None:
        current = transfer_session.transfer_stage
        if current and transfer_stages.stage(current) > transfer_stages.stage(stage):
            raise ValueError(
                "Transfer session {} is at stage {}; it cannot go back to {}".format(
                    transfer_session.id, current, stage
                )
            )
        transfer_session.transfer_stage = stage
        fields.append("transfer_stage")
    if stage_status is not None:
        transfer_session.transfer_stage_status = stage_status
        fields.append("transfer_stage_status")
    now = timezone.now()
    transfer_session.last_activity_timestamp = now
    sync_session = transfer_session.sync_session
    sync_session.last_activity_timestamp = now
    with transaction.atomic(using=router.db_for_write(TransferSession)):
        transfer_session.save(update_fields=fields)
        sync_session.save(update_fields=["last_activity_timestamp"])
