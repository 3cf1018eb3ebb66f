"""
One run of a stage job at a time, whichever host runs it.

Kolibri runs a job at least once: its workers requeue every RUNNING job of job
storage whenever they start, including a job that a worker on another host (or in
another container) is running at that moment. On PostgreSQL, where several hosts
may run workers on one job storage, the same stage job could then run twice at
once.

So on PostgreSQL each run of a stage job holds a session advisory lock keyed on
its job id, on a database connection of its own, from before it touches its
stage until it has settled it. A second run waits for the first to end, then
finds its stage settled and ends without touching any data. PostgreSQL drops the
lock with the connection, so a run whose worker was killed leaves the lock free
at once: a poll on any host can tell a live run from a dead one (see
:func:`run_is_held`), which a worker's pid cannot tell across hosts.

On SQLite the writers' turn already lets one stage job run at a time (see
:mod:`..writer_turn`), on the one host its database lives on.
"""

import contextlib
import functools
import logging

from ..server_lock import advisory_key
from .worker_identity import record_current_worker

logger = logging.getLogger(__name__)

__all__ = ["one_run_at_a_time", "run_is_held", "claims_runs"]


def _lock_key(job_id):
    return advisory_key("run:{}".format(job_id))


def claims_runs():
    """Whether stage runs hold a lock the other hosts can see: on PostgreSQL."""
    from django.db import connection

    return connection.vendor == "postgresql"


@contextlib.contextmanager
def _own_connection():
    """A connection to the default database that no other code of this thread uses."""
    from django.db import connections
    from django.db.utils import load_backend

    settings = connections.databases["default"]
    wrapper = load_backend(settings["ENGINE"]).DatabaseWrapper(settings, "default")
    try:
        yield wrapper
    finally:
        wrapper.close()


def _execute(wrapper, sql, key):
    with wrapper.cursor() as cursor:
        cursor.execute(sql, [key])
        return cursor.fetchone()[0]


@contextlib.contextmanager
def _run_claim(job_id):
    key = _lock_key(job_id)
    with _own_connection() as wrapper:
        if not _execute(wrapper, "SELECT pg_try_advisory_lock(%s)", key):
            logger.warning(
                "Stage job %s is already running elsewhere (Kolibri requeued it "
                "while a worker still ran it); this run waits for that one to end",
                job_id,
            )
            _execute(wrapper, "SELECT pg_advisory_lock(%s)", key)
        # now a poll on any host can tell whether this run is alive
        record_current_worker(job_id, claimed=True)
        # closing the connection at the end drops the lock
        yield


def run_is_held(job_id):
    """
    Whether a run of the job holds its claim now, on any host.

    :return: ``None`` where runs hold no claim (SQLite)
    :rtype: bool|None
    """
    if not claims_runs():
        return None
    from django.db import connection

    # the polling thread's own connection holds no run claim: its try succeeds
    # exactly when no run holds the lock, and it lets go at once
    key = _lock_key(job_id)
    if _execute(connection, "SELECT pg_try_advisory_lock(%s)", key):
        _execute(connection, "SELECT pg_advisory_unlock(%s)", key)
        return False
    return True


def one_run_at_a_time(task):
    """
    Run ``task`` (a stage job's function) holding its job's run claim, on
    PostgreSQL; elsewhere, or outside a Kolibri job, as it is.
    """

    @functools.wraps(task)
    def run_claimed(*args, **kwargs):
        from kolibri.core.tasks.utils import get_current_job

        job = get_current_job()
        if job is None or not claims_runs():
            return task(*args, **kwargs)
        with _run_claim(job.job_id):
            return task(*args, **kwargs)

    return run_claimed
