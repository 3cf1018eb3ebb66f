"""
Whether anyone is waiting for SQLite's write lock while a stage job writes in
pieces: the job pauses between pieces only then, and only until they are in.

SQLite gives no sign of a connection waiting for its lock, so each request says
so itself. While a request's thread runs a statement that takes or needs the
write lock on Kolibri's database (``BEGIN IMMEDIATE``, as Kolibri 0.19 begins
every transaction, or an ``INSERT``, ``UPDATE``, ``DELETE`` or ``REPLACE``), it
holds a shared lock on a file in ``KOLIBRI_HOME``: a statement that waits for the
write lock holds it for the whole wait. A stage job that cannot take the same
file lock exclusively knows that a writer is waiting in one of the server's
processes, and leaves the database alone until it is not, or for
:data:`MAX_WRITER_WAIT_SECONDS` at most. A request that only reads, or a client
polling, never makes a job pause.

Each request also holds a shared lock on a second file from its start to its
end, so a job (or an operator) can tell whether any request is in flight at all.

On Kolibri 0.16, whose Django (1.11) cannot watch single statements, a request
counts as a writer that may wait from its start to its end, as every request
did before.

A Kolibri job of another task running in a worker may write without saying so,
so while one runs the pieces pause as they always did. The operating system
drops the locks of a process that dies, so a crashed process never leaves the
jobs pausing for it. Where the operating system has no such locks (Windows),
every piece pauses.
"""

import contextlib
import logging
import os
import threading
import time

from .compat import STATEMENTS_CAN_BE_WRAPPED

logger = logging.getLogger(__name__)

__all__ = [
    "REQUESTS_LOCK_FILE_NAME",
    "WRITERS_LOCK_FILE_NAME",
    "MAX_WRITER_WAIT_SECONDS",
    "request_started",
    "request_finished",
    "serving_a_request",
    "requests_in_flight",
    "writers_waiting",
    "let_waiting_writers_in",
    "other_jobs_running",
]

#: The file each request holds a shared lock on, in ``KOLIBRI_HOME``.
REQUESTS_LOCK_FILE_NAME = "sync_extras_requests.lock"
#: The file a request's thread holds a shared lock on while a statement of its
#: takes or waits for the write lock, in ``KOLIBRI_HOME``.
WRITERS_LOCK_FILE_NAME = "sync_extras_writers.lock"
#: The longest a job leaves the lock free after a piece for writers that wait:
#: with pieces of about 0.1 s, no writer waits much longer than 0.3 s.
MAX_WRITER_WAIT_SECONDS = 0.2
#: How often a pausing job looks whether the waiting writers are in.
WRITER_LOOK_SECONDS = 0.005
#: How long a look at the running Kolibri jobs is trusted, in seconds: a job
#: starts far less often than a piece ends.
JOBS_LOOK_SECONDS = 1.0

#: The statements, upper-cased and stripped, that take or need the write lock.
_WRITE_STATEMENTS = (
    "BEGIN IMMEDIATE",
    "BEGIN EXCLUSIVE",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
)

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# per thread: the open lock files of the request it serves
_request = threading.local()
_jobs_look = {"at": None, "running": False}
_jobs_look_lock = threading.Lock()


def _lock_file_path(name):
    from kolibri.utils.conf import KOLIBRI_HOME

    return os.path.join(KOLIBRI_HOME, name)


def _database():
    from django.db import connections

    return connections["default"]


def request_started():
    """
    Count the current thread's request as in flight until :func:`request_finished`,
    and its writes to Kolibri's database as writers that may wait.
    """
    _request.serving = True
    if fcntl is None or getattr(_request, "lock_file", None) is not None:
        return
    # each open() is an open file description of its own: the requests of one
    # process's threads hold their shared locks side by side
    _request.lock_file = _open_and_lock(REQUESTS_LOCK_FILE_NAME, fcntl.LOCK_SH)
    database = _database()
    # only SQLite's single write lock makes a job pause
    if _request.lock_file is None or database.vendor != "sqlite":
        return
    if not STATEMENTS_CAN_BE_WRAPPED:
        # Django 1.11 cannot watch single statements: the whole request counts
        # as a writer that may wait, as every request did before
        _request.writers_file = _open_and_lock(WRITERS_LOCK_FILE_NAME, fcntl.LOCK_SH)
        return
    _request.writers_file = _open_and_lock(WRITERS_LOCK_FILE_NAME, None)
    if _mark_writes not in database.execute_wrappers:
        database.execute_wrappers.append(_mark_writes)


def _open_and_lock(name, operation):
    """The lock file ``name``, opened and, unless ``operation`` is None, locked."""
    try:
        open_file = open(_lock_file_path(name), "a")
    except OSError:
        logger.debug("Could not open %s", name, exc_info=True)
        return None
    if operation is not None and not _flock(open_file, operation):
        open_file.close()
        return None
    return open_file


@contextlib.contextmanager
def writing_as_a_request():
    """
    Outside a request (a stage job with nothing left to write but its status),
    count the block's writes as a request's: a stage job's pieces let them in.
    """
    request_started()
    try:
        yield
    finally:
        request_finished()


def request_finished():
    """The current thread's request has ended."""
    _request.serving = False
    lock_file = getattr(_request, "lock_file", None)
    writers_file = getattr(_request, "writers_file", None)
    _request.lock_file = None
    _request.writers_file = None
    wrappers = getattr(_database(), "execute_wrappers", [])
    while _mark_writes in wrappers:
        wrappers.remove(_mark_writes)
    # closing a file drops its lock
    for open_file in (lock_file, writers_file):
        if open_file is not None:
            open_file.close()


def serving_a_request():
    """
    :return: Whether the current thread serves a request (or writes as one, see
        :func:`writing_as_a_request`) now
    :rtype: bool
    """
    return getattr(_request, "serving", False)


def _is_write(sql):
    return str(sql).lstrip()[:16].upper().startswith(_WRITE_STATEMENTS)


def _mark_writes(execute, sql, params, many, context):
    """Django's execute wrapper on a request's connection: see the module's doc."""
    writers_file = getattr(_request, "writers_file", None)
    if writers_file is None or not _is_write(sql):
        return execute(sql, params, many, context)
    marked = _flock(writers_file, fcntl.LOCK_SH)
    try:
        return execute(sql, params, many, context)
    finally:
        if marked:
            _flock(writers_file, fcntl.LOCK_UN)


def _flock(open_file, operation):
    """:return: Whether the lock operation succeeded :rtype: bool"""
    try:
        fcntl.flock(open_file.fileno(), operation)
        return True
    except OSError:
        return False


def _held_elsewhere(name):
    """:return: Whether a shared lock on ``name`` is held; ``True`` if unknown."""
    if fcntl is None:
        return True
    try:
        with open(_lock_file_path(name), "a") as lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return True


def requests_in_flight():
    """
    :return: Whether any process of the server is serving a request now; ``True``
        where that cannot be told
    :rtype: bool
    """
    return _held_elsewhere(REQUESTS_LOCK_FILE_NAME)


def writers_waiting():
    """
    :return: Whether a request in any process of the server is running, or waiting
        to run, a statement that needs the write lock; ``True`` where that cannot
        be told
    :rtype: bool
    """
    return _held_elsewhere(WRITERS_LOCK_FILE_NAME)


def let_waiting_writers_in(longest=None):
    """
    Wait while requests wait for the write lock, ``longest`` seconds at most
    (:data:`MAX_WRITER_WAIT_SECONDS` by default); where that cannot be told, wait
    ``longest``.

    :return: Whether it waited
    :rtype: bool
    """
    if longest is None:
        longest = MAX_WRITER_WAIT_SECONDS
    if not writers_waiting():
        return False
    deadline = time.monotonic() + longest
    # where writers cannot be told apart (no fcntl), they always wait: the whole bound
    while time.monotonic() < deadline:
        time.sleep(min(WRITER_LOOK_SECONDS, max(0.0, deadline - time.monotonic())))
        if not writers_waiting():
            break
    return True


def other_jobs_running():
    """
    :return: Whether a Kolibri job other than a stage job is running, as seen at
        most :data:`JOBS_LOOK_SECONDS` ago
    :rtype: bool
    """
    from kolibri.core.tasks.job import State

    from .compat import jobs_in_states
    from .stage_status import RUN_STAGE_TASK

    with _jobs_look_lock:
        now = time.monotonic()
        if _jobs_look["at"] is None or now - _jobs_look["at"] > JOBS_LOOK_SECONDS:
            try:
                running = jobs_in_states([State.RUNNING])
                _jobs_look["running"] = any(j.func != RUN_STAGE_TASK for j in running)
            except Exception:
                logger.debug("Could not look at the running jobs", exc_info=True)
                _jobs_look["running"] = True
            _jobs_look["at"] = now
        return _jobs_look["running"]
