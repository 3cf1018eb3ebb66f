"""
One stage job writing at a time on SQLite, without holding a worker while it waits,
and without a busy loop over job storage.

SQLite has a single write lock for the whole database and every background stage
writes, so stage jobs running side by side only queue up inside the database, each
holding one of Kolibri's workers (and, past the busy timeout, failing with
``database is locked``). A stage job therefore first takes the writers' turn (see
:mod:`kolibri_sync_extras_plugin.writers_turn`, which a stage run in the request
takes too).

A job that finds the turn taken gives its worker back at once and asks Kolibri to
run it again later (``Job.retry_in``). Retrying every half second would keep
Kolibri's workers and job storage busy with a backlog of waiting jobs, ahead of
Kolibri's own jobs; so a waiting job backs off (the delay doubles up to
:data:`MAX_TURN_RETRY_DELAY`, counted in its metadata), and only the longest
waiting one waits at high priority: the others wait at regular priority, where a
Kolibri job queued before their retry comes first. Back-off does not slow the
hand-over: the job that gives the turn back makes the longest waiting job due at
once, at high priority, so the turn passes on within a look of Kolibri's job
checker, and waiting jobs take it in the order they were first queued. Everything
shared lives in job storage and the lock file, so this holds across workers and
processes. PostgreSQL lets writers of different rows proceed together, so there
every stage job runs when a worker is free.
"""

import functools
import logging
from datetime import timedelta

from ..compat import aware_utc
from ..stage_status import FIRST_ENQUEUED_KEY
from ..stage_status import waiting_result
from ..writers_turn import LOCK_FILE_NAME
from ..writers_turn import hand_the_turn_over
from ..writers_turn import lock_file_path
from ..writers_turn import needs_turns
from ..writers_turn import place_in_line
from ..writers_turn import waiting_jobs_in_line
from ..writers_turn import wake_longest_waiting_job
from ..writers_turn import writer_turn

logger = logging.getLogger(__name__)

__all__ = [
    "TURN_RETRY_DELAY",
    "MAX_TURN_RETRY_DELAY",
    "TURN_WAITS_KEY",
    "LOCK_FILE_NAME",
    "lock_file_path",
    "writer_turn",
    "turn_retry_delay",
    "waiting_jobs_in_line",
    "wake_longest_waiting_job",
    "one_writer_at_a_time",
    "FIRST_ENQUEUED_KEY",
]

#: How soon a stage job that first found the writers' turn taken is tried again.
TURN_RETRY_DELAY = timedelta(seconds=0.5)
#: The longest a waiting stage job waits between two tries: the bound on how late
#: a turn freed without a hand-over (its holder's process died) is taken.
MAX_TURN_RETRY_DELAY = timedelta(seconds=4)
#: The job metadata that counts how many times a job found the turn taken.
TURN_WAITS_KEY = "writer_turn_waits"


def turn_retry_delay(waits):
    """
    :param waits: How many times the job has found the turn taken before
    :return: How long it waits before its next try: :data:`TURN_RETRY_DELAY`,
        doubled per earlier wait, at most :data:`MAX_TURN_RETRY_DELAY`
    :rtype: datetime.timedelta
    """
    # bounded before doubling, so a job that waited for days does not overflow
    return min(TURN_RETRY_DELAY * 2 ** min(waits, 16), MAX_TURN_RETRY_DELAY)


def _first_enqueued(job):
    from kolibri.core.tasks.main import job_storage

    first = job.extra_metadata.get(FIRST_ENQUEUED_KEY)
    if first:
        return first
    scheduled_time = aware_utc(job_storage.get_orm_job(job.job_id).scheduled_time)
    return scheduled_time.isoformat() if scheduled_time is not None else None


def _heads_the_line(job):
    mine = place_in_line(job)
    line = waiting_jobs_in_line()
    # a job that cannot tell when it was first queued is not kept waiting behind
    return mine[0] is None or not line or mine <= place_in_line(line[0])


def _wait_for_the_turn(job, stage):
    """
    Have Kolibri run ``job`` again once it has backed off; the longest waiting job
    at high priority, so that a turn freed without a hand-over is taken even while
    long regular jobs fill the regular workers, the others at regular priority.
    """
    from kolibri.core.tasks.constants import Priority

    waits = job.extra_metadata.get(TURN_WAITS_KEY) or 0
    job.update_metadata(
        **{FIRST_ENQUEUED_KEY: _first_enqueued(job), TURN_WAITS_KEY: waits + 1}
    )
    priority = Priority.HIGH if _heads_the_line(job) else Priority.REGULAR
    delay = turn_retry_delay(waits)
    job.retry_in(delay, priority=priority)
    logger.debug(
        "Stage job %s waits %.1f s: another stage job is writing",
        job.job_id,
        delay.total_seconds(),
    )
    # Kolibri marks the job completed with this result, then queues it again
    return waiting_result(stage, "waiting for another stage job to finish writing")


def one_writer_at_a_time(task):
    """
    Run ``task`` (a stage job's function) only while holding the writers' turn,
    then hand the turn to the longest waiting stage job; otherwise have Kolibri run
    the job again after a back-off.

    Called outside a Kolibri job, or on a database other than SQLite, the task
    runs without waiting for the turn.
    """

    @functools.wraps(task)
    def run_in_turn(*args, **kwargs):
        from kolibri.core.tasks.utils import get_current_job

        job = get_current_job()
        if job is None or not needs_turns():
            return task(*args, **kwargs)
        held_the_turn = False
        try:
            with writer_turn() as turn:
                if turn:
                    held_the_turn = True
                    return task(*args, **kwargs)
        finally:
            # after the turn is given back, so the woken job finds it free
            if held_the_turn:
                hand_the_turn_over()
        return _wait_for_the_turn(job, kwargs.get("stage"))

    return run_in_turn
