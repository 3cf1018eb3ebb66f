"""
The check made on each client poll of a background stage: whether the job serving
it can still settle it.

Kolibri's job hook settles a stage when its job fails or is cancelled through job
storage; this catches what the hook cannot see: a job row that vanished, a worker
process that died without marking its job, a job Kolibri will never run or queue
again, and a stage put back to STARTED by a repeated request after its job had
settled it. Only the job of the stage the session is at counts: a job of an
earlier stage ending late says nothing about the current one. The poll of a stage
whose job backs off for the writers' turn also wakes the line of waiting jobs if
the turn is free (see :mod:`~kolibri_sync_extras_plugin.writer_turn`).

A client polls about once a second, and the check reads the transfer session and
the job in job storage, a database of its own on SQLite, whose connection each
request opens again: with 32 clients polling, it doubled a poll's processor time
in the server's process (5.6 ms against 3.4 ms for stock's). What it catches is
rare and has grace periods of seconds, so a server process checks one session at
most every :data:`POLL_CHECK_SECONDS` (see :func:`check_is_due`).
"""

import logging
import threading
import time

from django.utils import timezone
from kolibri.core.tasks.exceptions import JobNotFound
from kolibri.core.tasks.job import Job
from kolibri.core.tasks.job import State
from morango.constants import transfer_statuses

from ..compat import aware_utc
from ..compat import jobs_in_states
from ..config import get_stage_job_start_timeout
from ..errors import WorkerGone
from ..job.run_claim import run_is_held
from ..job.worker_identity import identity_of
from ..job.worker_identity import is_gone
from ..job.worker_identity import run_claimed
from ..stage_status import FIRST_ENQUEUED_KEY
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import SYNC_EXTRAS_QUEUE
from ..stage_status import error_stage
from ..stage_status import error_unstarted_stage
from ..stage_status import held_stage
from ..stage_status import is_waiting
from ..stage_status import job_id_for
from ..stage_status import settle_for_job_state
from ..stage_status import settle_from_completed_job

logger = logging.getLogger(__name__)

__all__ = [
    "MISSING_JOB_GRACE_SECONDS",
    "POLL_CHECK_SECONDS",
    "check_is_due",
    "forget_checks",
    "worker_is_gone",
    "check_background_stage",
    "never_picked_up",
    "stage_job_running",
]

#: How long a stage may show STARTED with no job in job storage before it errors:
#: the job is enqueued just after the request that started the stage has ended.
MISSING_JOB_GRACE_SECONDS = 10


#: The least time between two checks of one polled transfer session in a server
#: process: a client polls about once a second.
POLL_CHECK_SECONDS = 5.0
#: How many sessions' last checks a process remembers before forgetting the
#: ones past :data:`POLL_CHECK_SECONDS`.
_REMEMBERED_CHECKS = 1000

_last_checks = {}
_last_checks_lock = threading.Lock()


def check_is_due(transfer_session_id, now=None):
    """
    Whether a poll of this transfer session should run
    :func:`check_background_stage`: none has run in this process for
    :data:`POLL_CHECK_SECONDS`. Calling it counts as running one.

    :param now: ``time.monotonic()``, by default
    :rtype: bool
    """
    now = time.monotonic() if now is None else now
    with _last_checks_lock:
        last = _last_checks.get(transfer_session_id)
        if last is not None and now - last < POLL_CHECK_SECONDS:
            return False
        _last_checks[transfer_session_id] = now
        if len(_last_checks) > _REMEMBERED_CHECKS:
            for session_id, checked in list(_last_checks.items()):
                if now - checked >= POLL_CHECK_SECONDS:
                    del _last_checks[session_id]
        return True


def forget_checks():
    """Forget every session's last check (the tests start each with none)."""
    with _last_checks_lock:
        _last_checks.clear()


#: The states of a job that a worker has taken and not yet finished: Kolibri's
#: shutdown marks a running job CANCELING and leaves it to end on its own.
_TAKEN_JOB_STATES = frozenset((State.RUNNING, State.CANCELING))


def worker_is_gone(orm_job, stage_still_held=None):
    """
    Whether the worker process that took a RUNNING (or CANCELING) job has
    certainly died (killed, out of memory) without marking it: Kolibri only
    requeues or cancels such a job when its workers next start, and a client is
    polling now.

    Two signs count, whichever host the worker ran on:

    - the identity the job recorded as it started (see
      :mod:`~kolibri_sync_extras_plugin.job.worker_identity`) names a process of
      this host and pid namespace that has ended;
    - on PostgreSQL, the job's run recorded that it holds its run claim, and no
      run holds it any more (see :mod:`~kolibri_sync_extras_plugin.job.run_claim`):
      the lock died with the run's connection. A run gives its claim back only
      after settling its stage, so this counts only while ``stage_still_held()``
      says the stage still waits on the job.

    Otherwise the worker counts as alive.

    :type orm_job: kolibri.core.tasks.models.Job
    :param stage_still_held: Re-reads whether the stage still waits on the job
    :rtype: bool
    """
    if orm_job.state not in _TAKEN_JOB_STATES:
        return False
    if is_gone(identity_of(orm_job.worker_extra)):
        return True
    if not run_claimed(orm_job.worker_extra) or run_is_held(orm_job.id) is not False:
        return False
    return stage_still_held is not None and stage_still_held()


def check_background_stage(transfer_session_id):
    """
    Settle a background stage whose job can no longer settle it, so a polling client
    stops with an error rather than polling forever. Called on each client poll.

    - the job is still reserved, never queued: the request that reserved it has
      answered, since its client polls, but did not queue it (its process died
      between the two); it is queued now (see :func:`_queue_reserved_job`),
    - the job is gone from job storage (past a short grace for its enqueueing),
    - the job FAILED or was CANCELED (normally the job hook has already done this),
    - the job is RUNNING (or CANCELING) in a worker process that certainly no
      longer exists (see :func:`worker_is_gone`): the job is marked FAILED, so it
      is not requeued behind the client's back,
    - the job is still QUEUED, no worker ever picked it up, no other stage job
      runs, and it has waited longer than ``STAGE_JOB_START_TIMEOUT`` (see
      :func:`_settle_if_no_worker`); one backing off for the writers' turn, which
      is free, is not settled but woken with the line (see
      :func:`_wake_the_line_if_waiting_for_the_turn`),
    - the job is SELECTED by Kolibri's workers but never started (see
      :func:`_settle_if_never_started`),
    - the job gave its worker back to wait for its writer's turn and Kolibri
      never queued it again (see :func:`_settle_if_not_requeued`),
    - the job COMPLETED but the stage still shows STARTED (see
      :func:`~kolibri_sync_extras_plugin.stage_status.settle_from_completed_job`).

    :param transfer_session_id: The polled transfer session's id
    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    from kolibri.core.tasks.main import job_storage

    session = held_stage(transfer_session_id)
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
        if worker_is_gone(orm_job, lambda: _still_held(transfer_session_id, stage)):
            _fail_job_of_gone_worker(transfer_session_id, stage, orm_job)
            job_state = State.FAILED
        else:
            job_state = orm_job.state
        if job_state == State.PENDING:
            return _queue_reserved_job(transfer_session_id, stage, orm_job)
        if job_state == State.QUEUED:
            _wake_the_line_if_waiting_for_the_turn(orm_job)
            return _settle_if_no_worker(transfer_session_id, stage, orm_job)
        if job_state == State.SELECTED:
            return _settle_if_never_started(transfer_session_id, stage, orm_job)
        if job_state == State.COMPLETED:
            result = Job.from_json(orm_job.saved_job).result
            if is_waiting(result):
                return _settle_if_not_requeued(transfer_session_id, stage, orm_job)
            return settle_from_completed_job(transfer_session_id, stage, job_id, result)
    return settle_for_job_state(transfer_session_id, stage, job_id, job_state)


def _still_held(transfer_session_id, stage):
    session = held_stage(transfer_session_id)
    return session is not None and session["transfer_stage"] == stage


def _queue_reserved_job(transfer_session_id, stage, orm_job):
    """
    Queue a stage job still PENDING although its client polls the stage: the
    request that reserved it answered after morango had saved the stage as held,
    so the job may run now. Its process normally queues it as the request ends; a
    process killed in between (uwsgi's ``harakiri``, the out-of-memory killer)
    leaves it to this poll. So, for a moment, does a busy process whose thread has
    sent the answer but not yet finished the request, when the client polls
    first: that is no fault, and is logged as information, not as a warning.

    :return: ``None``: the stage is not settled, its job is on its way
    """
    from ..compat import queue_reserved_job
    from ..job.worker_identity import is_running
    from ..job.worker_identity import reserver_of

    reserver_runs = is_running(reserver_of(orm_job.worker_extra))
    if not queue_reserved_job(orm_job.id):
        return None
    if not reserver_runs:
        logger.warning(
            "Queued job %s of stage %s of transfer session %s on its client's "
            "poll: the server process that reserved it ended its request without "
            "queueing it (killed or recycled mid-request?)",
            orm_job.id,
            stage,
            transfer_session_id,
        )
    else:
        logger.info(
            "Queued job %s of stage %s of transfer session %s on its client's "
            "poll, which came before the request that reserved it had finished",
            orm_job.id,
            stage,
            transfer_session_id,
        )
    return None


def _fail_job_of_gone_worker(transfer_session_id, stage, orm_job):
    """Mark failed a job whose worker process died, saying so in the log."""
    from kolibri.core.tasks.main import job_storage

    logger.error(
        "Job %s of stage %s of transfer session %s was %s in worker process %s, "
        "which no longer exists (killed, out of memory); marking it failed so it "
        "is not run again behind the client's back. Kolibri's log shows why the "
        "worker stopped; the client syncs again later.",
        orm_job.id,
        stage,
        transfer_session_id,
        orm_job.state,
        orm_job.worker_process,
    )
    job_storage.mark_job_as_failed(
        orm_job.id,
        WorkerGone(
            "worker process {} died while running the stage".format(
                orm_job.worker_process
            )
        ),
        "",
    )


def _seconds_since_due(orm_job):
    """
    :return: Seconds since the job was last due to run (its scheduled time, which
        each requeue moves), or ``None`` if job storage does not say
    :rtype: float|None
    """
    due = aware_utc(orm_job.scheduled_time)
    if due is None:
        return None
    return (timezone.now() - due).total_seconds()


def _waited_past_start_timeout(orm_job):
    """
    :return: Seconds since the job was last due, if past
        ``STAGE_JOB_START_TIMEOUT``; else ``None``
    :rtype: float|None
    """
    waited = _seconds_since_due(orm_job)
    if waited is None or waited < get_stage_job_start_timeout():
        return None
    return waited


def never_picked_up(orm_job):
    """
    Whether no worker has taken the job yet: it records no worker, and it never
    gave a worker back to wait for its writer's turn.
    """
    if identity_of(orm_job.worker_extra) is not None:
        return False
    return not _waits_for_the_turn(orm_job)


def stage_job_running():
    """Whether a worker is running any stage job now."""
    return bool(
        jobs_in_states([State.RUNNING], queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK)
    )


def _wake_the_line_if_waiting_for_the_turn(orm_job):
    """
    A job backing off for the writers' turn (queued again, due later) runs at a
    poll of its client once the turn is free, whoever freed it: see
    :func:`~kolibri_sync_extras_plugin.writer_turn.wake_the_line_if_the_turn_is_free`.
    """
    from ..writer_turn import wake_the_line_if_the_turn_is_free

    waited = _seconds_since_due(orm_job)
    if waited is None or waited >= 0 or not _waits_for_the_turn(orm_job):
        return
    woken = wake_the_line_if_the_turn_is_free()
    if woken is not None:
        logger.debug("Woke stage job %s on a poll: the writers' turn was free", woken)


def _waits_for_the_turn(orm_job):
    """Whether the job gave its worker back to wait for the writers' turn."""
    metadata = Job.from_json(orm_job.saved_job).extra_metadata or {}
    return bool(metadata.get(FIRST_ENQUEUED_KEY))


def _settle_if_no_worker(transfer_session_id, stage, orm_job):
    """
    A stage job that waits for its first worker past ``STAGE_JOB_START_TIMEOUT``
    while no stage job runs on the server waits for workers that are not there
    (the web server runs without ``kolibri services``, the workers crashed):
    the job is cancelled, so it counts against no cap and never runs late, and
    the stage is ended as errored with what to start. A job queued behind others
    that a worker is running waits on.

    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    from kolibri.core.tasks.main import job_storage

    waited = _waited_past_start_timeout(orm_job)
    if waited is None:
        return None
    if not never_picked_up(orm_job) or stage_job_running():
        return None
    status = error_unstarted_stage(transfer_session_id, stage, orm_job.id, waited)
    if status is not None:
        job_storage.mark_job_as_canceled(orm_job.id)
    return status


def _settle_if_never_started(transfer_session_id, stage, orm_job):
    """
    Kolibri's workers mark a job SELECTED as they hand it to a worker, which
    marks it RUNNING at once; a worker process that stopped in between leaves it
    SELECTED, which Kolibri never runs nor requeues, not even when its workers
    start again. Past ``STAGE_JOB_START_TIMEOUT`` since the job was due, while no
    stage job runs, the job is cancelled and the stage ended as errored.

    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    from kolibri.core.tasks.main import job_storage

    waited = _waited_past_start_timeout(orm_job)
    if waited is None:
        return None
    if stage_job_running() or not error_stage(transfer_session_id, stage):
        return None
    logger.error(
        "Stage %s of transfer session %s is errored: its job %s was selected to "
        "run but never started (%d s since it was due), and Kolibri never runs or "
        "requeues such a job. The worker process stopped between taking it and "
        "starting it: check Kolibri's log, and restart Kolibri's workers if they "
        "are down; the job is cancelled and the client syncs again later.",
        stage,
        transfer_session_id,
        orm_job.id,
        waited,
    )
    job_storage.mark_job_as_canceled(orm_job.id)
    return transfer_statuses.ERRORED


def _settle_if_not_requeued(transfer_session_id, stage, orm_job):
    """
    A job that gave its worker back to wait for its writer's turn is marked
    COMPLETED with a waiting result and queued again by Kolibri a moment later
    (``Job.retry_in``). If that requeue failed (job storage locked or
    unreachable, the worker killed in between), nothing will run the stage: past
    ``STAGE_JOB_START_TIMEOUT`` since the job was last due, the stage is ended as
    errored. A poll between the completing and the requeue leaves it alone.

    :return: The status the stage was settled with, or ``None``
    :rtype: str|None
    """
    waited = _waited_past_start_timeout(orm_job)
    if waited is None:
        return None
    if not error_stage(transfer_session_id, stage):
        return None
    logger.error(
        "Stage %s of transfer session %s is errored: its job %s gave its worker "
        "back to wait for another stage job to finish writing, and Kolibri never "
        "queued it again (%d s since it was last due). The worker's log shows why "
        "the requeue failed (e.g. job storage's database locked or unreachable); "
        "the client syncs again later.",
        stage,
        transfer_session_id,
        orm_job.id,
        waited,
    )
    return transfer_statuses.ERRORED
