"""
The writers' turn on SQLite: one stage writing at a time, whether it runs in a
background job or in the client's request.

SQLite has a single write lock for the whole database, and every stage writes:
two stages at once only queue up inside the database. So a stage first takes the
writers' turn, an exclusive, non-blocking lock on a file in ``KOLIBRI_HOME``,
which the operating system releases if the process dies. A stage job that finds
it taken waits (see :mod:`kolibri_sync_extras_plugin.job.writer_turn`); a stage
small enough for the request that finds it taken goes to a job instead of
waiting in the request (see :mod:`kolibri_sync_extras_plugin.request.operation`).
Whoever gives the turn back hands it to the longest waiting stage job. PostgreSQL
lets writers of different rows proceed together, so there the turn is always
free.
"""

import contextlib
import logging
import os
import threading

from .compat import jobs_in_states
from .compat import parse_time
from .compat import run_queued_job_now
from .stage_status import FIRST_ENQUEUED_KEY
from .stage_status import RUN_STAGE_TASK
from .stage_status import SYNC_EXTRAS_QUEUE

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_FILE_NAME",
    "lock_file_path",
    "needs_turns",
    "writer_turn",
    "place_in_line",
    "waiting_jobs_in_line",
    "wake_longest_waiting_job",
    "hand_the_turn_over",
]

#: The lock file, in ``KOLIBRI_HOME``.
LOCK_FILE_NAME = "sync_extras_stage_writer.lock"

try:
    import fcntl
except ImportError:  # Windows: the turn is kept within the worker process
    fcntl = None
    _process_turn = threading.Lock()


def lock_file_path():
    """:rtype: str"""
    from kolibri.utils.conf import KOLIBRI_HOME

    return os.path.join(KOLIBRI_HOME, LOCK_FILE_NAME)


def needs_turns():
    """Whether stages take turns here: on SQLite."""
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
    if not needs_turns():
        yield True
        return
    with _file_turn() if fcntl is not None else _thread_turn() as turn:
        yield turn


def place_in_line(job):
    """A waiting job's place in line: when it was first queued, then its id."""
    return (parse_time(job.extra_metadata.get(FIRST_ENQUEUED_KEY)), job.job_id)


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
        if parse_time(job.extra_metadata.get(FIRST_ENQUEUED_KEY)) is not None
    ]
    return sorted(waiting, key=place_in_line)


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


def hand_the_turn_over():
    """
    After giving the turn back, wake the longest waiting stage job (see
    :func:`wake_longest_waiting_job`). A failure is logged, never raised: the
    stage has run, and the waiting jobs still take the turn after their back-off.
    """
    try:
        wake_longest_waiting_job()
    except Exception:
        logger.exception("Could not hand the writers' turn to a waiting stage job")
