"""
One stage job writing at a time on SQLite, without holding a worker while it waits.

SQLite has a single write lock for the whole database and every background stage
writes, so stage jobs running side by side only queue up inside the database, each
holding one of Kolibri's workers (and, past the busy timeout, failing with
``database is locked``). A stage job therefore first takes the writers' turn: an
exclusive, non-blocking lock on a file in ``KOLIBRI_HOME``, which the operating
system releases if the process dies. A job that finds the turn taken gives its
worker back at once and asks Kolibri to run it again shortly (``Job.retry_in``),
so Kolibri's own jobs keep running while stage jobs wait, and waiting jobs take
the turn roughly in the order they were queued. PostgreSQL lets writers of
different rows proceed together, so there every stage job runs when a worker is
free.
"""

import contextlib
import functools
import logging
import os
import threading
from datetime import timedelta

from ..compat import aware_utc
from ..stage_status import FIRST_ENQUEUED_KEY
from ..stage_status import waiting_result

logger = logging.getLogger(__name__)

__all__ = [
    "TURN_RETRY_DELAY",
    "LOCK_FILE_NAME",
    "lock_file_path",
    "writer_turn",
    "one_writer_at_a_time",
    "FIRST_ENQUEUED_KEY",
]

#: How soon a stage job that found the writers' turn taken is tried again.
TURN_RETRY_DELAY = timedelta(seconds=0.5)
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


def _remember_first_enqueued(job):
    from kolibri.core.tasks.main import job_storage

    if job.extra_metadata.get(FIRST_ENQUEUED_KEY):
        return
    scheduled_time = aware_utc(job_storage.get_orm_job(job.job_id).scheduled_time)
    if scheduled_time is not None:
        job.update_metadata(**{FIRST_ENQUEUED_KEY: scheduled_time.isoformat()})


def one_writer_at_a_time(task):
    """
    Run ``task`` (a stage job's function) only while holding the writers' turn;
    otherwise have Kolibri run the job again after :data:`TURN_RETRY_DELAY`.

    Called outside a Kolibri job, the task runs without waiting for the turn.
    """

    @functools.wraps(task)
    def run_in_turn(*args, **kwargs):
        from kolibri.core.tasks.utils import get_current_job

        job = get_current_job()
        if job is None:
            return task(*args, **kwargs)
        with writer_turn() as turn:
            if turn:
                return task(*args, **kwargs)
        _remember_first_enqueued(job)
        job.retry_in(TURN_RETRY_DELAY)
        logger.debug("Stage job %s waits: another stage job is writing", job.job_id)
        # Kolibri marks the job completed with this result, then queues it again
        return waiting_result(
            kwargs.get("stage"), "waiting for another stage job to finish writing"
        )

    return run_in_turn
