"""
One stage job writing at a time on SQLite, without holding a worker while it waits,
and without a busy loop over job storage.

SQLite has a single write lock for the whole database and every background stage
writes, so stage jobs running side by side only queue up inside the database, each
holding one of Kolibri's workers (and, past the busy timeout, failing with
``database is locked``). A stage job therefore first takes the writers' turn: an
exclusive, non-blocking lock on a file in ``KOLIBRI_HOME``, which the operating
system releases if the process dies.

A job that finds the turn taken gives its worker back at once and asks Kolibri to
run it again later (``Job.retry_in``). What moves the line on is the hand-over:
the job that gives the turn back makes the longest waiting job due at once, at
high priority, so the turn passes on within a look of Kolibri's job checker, and
waiting jobs take it in the order they were first queued, the stages a client
polls for first. A waiting job's own tries are only the safety net for a turn
freed without a hand-over (its holder's process died), and each is a run of a
job in the server's process (19 ms of its processor in the job alone, besides
Kolibri's own work to run and requeue it), taken from the job that holds the
turn; so they back off steeply: the delay doubles from
:data:`TURN_RETRY_DELAY` up to :data:`MAX_TURN_RETRY_DELAY`, counted in the job's
metadata. A stage a client polls for does not depend on them: each poll of a
waiting stage looks whether the turn is free and, if so, wakes the line (see
:func:`wake_the_line_if_the_turn_is_free`). Only the longest waiting job waits at
high priority: the others wait at regular priority, where a Kolibri job queued
before their retry comes first. A cleanup, which no client waits for, gives the
turn to the stages a client polls for (for up to :data:`MAX_GIVE_WAY`, so it is
never put off for good, holding its client's place under the caps) when it takes
the turn at all: a push's cleanup runs beside the holder unless
``INLINE_STAGE_RECORDS`` is 0 (see
:mod:`~kolibri_sync_extras_plugin.job.small_stage`). Everything
shared lives in job storage and the lock file, so this holds across workers and
processes. PostgreSQL lets writers of different rows proceed together, so there
every stage job runs when a worker is free.
"""

import contextlib
import functools
import logging
import os
import threading
from datetime import timedelta

from morango.constants import transfer_stages

from . import requests_in_flight
from .compat import aware_utc
from .compat import jobs_in_states
from .compat import parse_time
from .compat import run_queued_job_now
from .job.small_stage import is_small
from .job.small_stage import small_waiting_jobs
from .stage_status import FIRST_ENQUEUED_KEY
from .stage_status import RUN_STAGE_TASK
from .stage_status import SYNC_EXTRAS_QUEUE
from .stage_status import waiting_result

logger = logging.getLogger(__name__)

__all__ = [
    "TURN_RETRY_DELAY",
    "MAX_TURN_RETRY_DELAY",
    "TURN_WAITS_KEY",
    "UNAWAITED_STAGES",
    "MAX_GIVE_WAY",
    "LOCK_FILE_NAME",
    "lock_file_path",
    "side_lane",
    "side_lane_path",
    "writer_turn",
    "turn_handed_over_after",
    "turn_retry_delay",
    "waiting_jobs_in_line",
    "wake_longest_waiting_job",
    "wake_small_jobs",
    "wake_the_line_if_the_turn_is_free",
    "hand_the_turn_over",
    "one_writer_at_a_time",
    "FIRST_ENQUEUED_KEY",
]

#: How soon a stage job that first found the writers' turn taken is tried again,
#: unless a hand-over or its client's poll wakes it first.
TURN_RETRY_DELAY = timedelta(seconds=20)
#: The longest a waiting stage job waits between two tries: the bound on how late
#: a turn freed without a hand-over (its holder's process died) is taken by a
#: stage no client polls for. With 32 devices pushing at once, 31 deserializing
#: jobs wait for the one applying every device's records (25 s on one 2-core
#: server, 100 s on a slower one): backing off to 4 s they ran 260 times and
#: took 4.9 s of the processor of the server's process, which that job shares;
#: from 5 s to 60 s, 156 times (7 s on the slower server).
MAX_TURN_RETRY_DELAY = timedelta(seconds=120)
#: The stages no client waits for: morango's client closes its transfer session
#: without waiting for the server's cleanup.
UNAWAITED_STAGES = frozenset([transfer_stages.CLEANUP])
#: How long a stage job of :data:`UNAWAITED_STAGES` gives the writers' turn to
#: the stages a client polls for, from when it was first queued.
MAX_GIVE_WAY = timedelta(seconds=60)
#: The job metadata that counts how many times a job found the turn taken.
TURN_WAITS_KEY = "writer_turn_waits"
#: The lock file, in ``KOLIBRI_HOME``.
LOCK_FILE_NAME = "sync_extras_stage_writer.lock"
#: The lock file of the small jobs beside the holder, in ``KOLIBRI_HOME``.
SIDE_LANE_FILE_NAME = "sync_extras_side_lane.lock"

try:
    import fcntl
except ImportError:  # Windows: the turn is kept within the worker process
    fcntl = None
    _process_turn = threading.Lock()


def lock_file_path():
    """:rtype: str"""
    from kolibri.utils.conf import KOLIBRI_HOME

    return os.path.join(KOLIBRI_HOME, LOCK_FILE_NAME)


def side_lane_path():
    """:rtype: str"""
    from kolibri.utils.conf import KOLIBRI_HOME

    return os.path.join(KOLIBRI_HOME, SIDE_LANE_FILE_NAME)


@contextlib.contextmanager
def side_lane(stage):
    """
    One small stage job at a time beside the turn's holder (see
    :mod:`~kolibri_sync_extras_plugin.job.small_stage`), waiting for the lane
    without SQLite.

    With 16 devices pushing at once, nine dequeuing jobs ran side by side and
    each waited in SQLite's busy handler, which lets in whoever asks first after
    the lock is freed and makes the longest waiter sleep the longest: the lab's
    probe waited 0.83 s for the write lock among them (0.55 s at most with the
    lane). In the lane a request waits for one small job's transaction and the
    holder's piece at most. A cleanup stays out of it: no client waits for it,
    and most of its time is Kolibri's notifications, written to a database of
    their own. Where the operating system has no file locks (Windows), there is
    no lane.
    """
    if fcntl is None or stage in UNAWAITED_STAGES:
        yield
        return
    with open(side_lane_path(), "a") as lane:
        # blocks this worker, as SQLite's busy handler did, but outside SQLite
        fcntl.flock(lane.fileno(), fcntl.LOCK_EX)
        yield  # closing the file drops the lock


def _needs_turns():
    from django.db import connection

    return connection.vendor == "sqlite"


@contextlib.contextmanager
def _file_turn():
    # each open() is its own open file description, so two threads of one process
    # exclude each other as two processes do
    with open(lock_file_path(), "a") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _thread_turn():
    if not _process_turn.acquire(blocking=False):
        yield False
        return
    try:
        yield True
    finally:
        _process_turn.release()


@contextlib.contextmanager
def writer_turn():
    """
    Take the writers' turn if it is free.

    :return: A context manager yielding whether this caller holds the turn; on a
        database other than SQLite always ``True``
    """
    if not _needs_turns():
        yield True
        return
    with _file_turn() if fcntl is not None else _thread_turn() as turn:
        yield turn


@contextlib.contextmanager
def turn_handed_over_after():
    """
    The writers' turn if it is free (see :func:`writer_turn`), handed over when
    the block ends (see :func:`hand_the_turn_over`), after it is given back, so
    the woken jobs find it free.

    A stage job runs in it, and so does a stage run in a request: on SQLite, one
    that does not hold the turn would wait in the request for SQLite's lock
    behind a stage job's pieces and the other requests' stages (seconds, with a
    class set of devices starting their pulls at once), so its caller sends the
    stage to a job instead.

    :return: A context manager yielding whether the caller holds the turn; on a
        database other than SQLite always ``True``, and nothing is handed over
    """
    if not _needs_turns():
        yield True
        return
    held = False
    try:
        with writer_turn() as turn:
            held = turn
            yield turn
    finally:
        if held:
            hand_the_turn_over()


def turn_retry_delay(waits):
    """
    :param waits: How many times the job has found the turn taken before
    :return: How long it waits before its next try: :data:`TURN_RETRY_DELAY`,
        doubled per earlier wait, at most :data:`MAX_TURN_RETRY_DELAY`
    :rtype: datetime.timedelta
    """
    # bounded before doubling, so a job that waited for days does not overflow
    return min(TURN_RETRY_DELAY * 2 ** min(waits, 16), MAX_TURN_RETRY_DELAY)


def _first_queued(job):
    """When ``job`` was first queued, as recorded when it first waited. :rtype: datetime|None"""
    return parse_time(job.extra_metadata.get(FIRST_ENQUEUED_KEY))


def _may_be_put_off(job, first_queued):
    """
    Whether ``job`` still gives way to the stages a client polls for: it is of
    :data:`UNAWAITED_STAGES`, first queued less than :data:`MAX_GIVE_WAY` ago
    (or when, it cannot tell).
    """
    if job.kwargs.get("stage") not in UNAWAITED_STAGES:
        return False
    from django.utils import timezone

    return first_queued is None or timezone.now() - first_queued < MAX_GIVE_WAY


def _place_in_line(job):
    first_queued = _first_queued(job)
    # False sorts first: the stages a client polls for, then by when first queued
    return (_may_be_put_off(job, first_queued), first_queued, job.job_id)


def waiting_jobs_in_line():
    """
    The stage jobs queued again to wait for the turn, the longest waiting first
    (by when each was first queued).

    :rtype: list[kolibri.core.tasks.job.Job]
    """
    from kolibri.core.tasks.job import State

    waiting = [
        job
        for job in jobs_in_states(
            [State.QUEUED], queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK
        )
        if _first_queued(job) is not None
    ]
    return sorted(waiting, key=_place_in_line)


def wake_longest_waiting_job():
    """
    Hand the turn over: make the longest waiting stage job due now, at high
    priority, so it takes the turn without waiting out its back-off or behind
    Kolibri's regular jobs. One still queued is woken; one a worker has picked up
    meanwhile tries the turn by itself.

    :return: The woken job's id, or ``None`` if no job waits
    :rtype: str|None
    """
    from kolibri.core.tasks.constants import Priority

    for job in waiting_jobs_in_line():
        if run_queued_job_now(job.job_id, Priority.HIGH):
            return job.job_id
    return None


def wake_the_line_if_the_turn_is_free():
    """
    Wake the longest waiting stage job if the writers' turn is free this moment:
    called on a client's poll of a stage whose job waits for the turn, so a turn
    freed without a hand-over (its holder's process died, or the job began
    waiting in the very moment of one) is taken at one of that client's polls
    (checked every few seconds, see
    :data:`~kolibri_sync_extras_plugin.request.poll.POLL_CHECK_SECONDS`), not
    after the job's back-off. The longest waiting job is woken rather than the
    polled one, so the line keeps its order.

    The turn is looked at by taking it and giving it back at once: a job trying
    it in that moment finds it taken and waits, to be woken by the next hand-over
    or poll.

    :return: The woken job's id, or ``None`` if the turn is held, no job waits,
        or the database is not SQLite
    :rtype: str|None
    """
    if not _needs_turns():
        return None
    with writer_turn() as turn:
        free = turn
    return wake_longest_waiting_job() if free else None


def _first_enqueued(job):
    from kolibri.core.tasks.main import job_storage

    first = job.extra_metadata.get(FIRST_ENQUEUED_KEY)
    if first:
        return first
    scheduled_time = aware_utc(job_storage.get_orm_job(job.job_id).scheduled_time)
    return scheduled_time.isoformat() if scheduled_time is not None else None


def _heads_the_line(job):
    mine = _place_in_line(job)
    line = waiting_jobs_in_line()
    # a job that cannot tell when it was first queued is not kept waiting behind
    return mine[1] is None or not line or mine <= _place_in_line(line[0])


def _gives_way(job):
    """
    Whether ``job``, holding the free turn, leaves it to a stage a client polls
    for that waits in line: only a job of :data:`UNAWAITED_STAGES` does, and only
    for :data:`MAX_GIVE_WAY`.
    """
    if job.kwargs.get("stage") not in UNAWAITED_STAGES:
        # spares a stage a client polls for the reads below
        return False
    if not _may_be_put_off(job, parse_time(_first_enqueued(job))):
        return False
    return any(
        not _may_be_put_off(waiting, _first_queued(waiting))
        for waiting in waiting_jobs_in_line()
    )


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


def wake_small_jobs():
    """
    Make due now, at high priority, every waiting stage job that has become small
    (see :mod:`~kolibri_sync_extras_plugin.job.small_stage`): each runs at once,
    beside the turn's holder, instead of waiting for the turn in a chain.

    :return: The woken jobs' ids
    :rtype: list[str]
    """
    from kolibri.core.tasks.constants import Priority

    return [
        job.job_id
        for job in small_waiting_jobs(waiting_jobs_in_line())
        if run_queued_job_now(job.job_id, Priority.HIGH)
    ]


def hand_the_turn_over():
    """
    What the holder of the writers' turn does once it has given the turn back:
    wake the longest waiting stage job and every one that has become small.
    """
    try:
        wake_longest_waiting_job()
        wake_small_jobs()
    except Exception:
        # the stage has run; the waiting jobs still take the turn, at a poll of
        # their clients or after their back-off
        logger.exception("Could not hand the writers' turn to a waiting stage job")


def one_writer_at_a_time(task):
    """
    Run ``task`` (a stage job's function) only while holding the writers' turn,
    then hand the turn to the longest waiting stage job; otherwise, or when a
    cleanup gives the turn to a stage a client polls for, have Kolibri run the job
    again after a back-off.

    Called outside a Kolibri job, or on a database other than SQLite, the task
    runs without waiting for the turn.
    """

    @functools.wraps(task)
    def run_in_turn(*args, **kwargs):
        from kolibri.core.tasks.utils import get_current_job

        job = get_current_job()
        if job is None or not _needs_turns():
            return task(*args, **kwargs)
        if is_small(job):
            # its writes wait as a request's do, and the holder lets them in
            with side_lane(kwargs.get("stage")):
                with requests_in_flight.writing_as_a_request():
                    return task(*args, **kwargs)
        with turn_handed_over_after() as turn:
            if turn and not _gives_way(job):
                return task(*args, **kwargs)
        return _wait_for_the_turn(job, kwargs.get("stage"))

    return run_in_turn
