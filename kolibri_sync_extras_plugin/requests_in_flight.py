"""
Whether anyone may be waiting for SQLite's write lock while a stage job writes in
pieces: the job pauses between pieces only then.

SQLite gives no sign of a connection waiting for its lock, so the plugin looks at
who could be one: an HTTP request being served in any of the server's processes
(a client's chunk, a learner's progress, Kolibri's own pages), or a Kolibri job
of another task running in a worker. Each request holds a shared lock on a file
in ``KOLIBRI_HOME`` from its start to its end; a stage job that can take the same
lock exclusively, without waiting, knows that no request is in flight. The
operating system drops the locks of a process that dies, so a crashed process
never leaves the jobs pausing for it.

Where the operating system has no such locks (Windows), every piece pauses, as
before.
"""

import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

__all__ = [
    "REQUESTS_LOCK_FILE_NAME",
    "request_started",
    "request_finished",
    "requests_in_flight",
    "other_jobs_running",
    "someone_may_wait",
]

#: The file each request holds a shared lock on, in ``KOLIBRI_HOME``.
REQUESTS_LOCK_FILE_NAME = "sync_extras_requests.lock"
#: How long a look at the running Kolibri jobs is trusted, in seconds: a job
#: starts far less often than a piece ends.
JOBS_LOOK_SECONDS = 1.0

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# per thread: the open lock file of the request it serves
_request = threading.local()
_jobs_look = {"at": None, "running": False}
_jobs_look_lock = threading.Lock()


def _lock_file_path():
    from kolibri.utils.conf import KOLIBRI_HOME

    return os.path.join(KOLIBRI_HOME, REQUESTS_LOCK_FILE_NAME)


def request_started():
    """Count the current thread's request as in flight until :func:`request_finished`."""
    if fcntl is None or getattr(_request, "lock_file", None) is not None:
        return
    try:
        # each open() is an open file description of its own: the requests of
        # one process's threads hold their shared locks side by side
        lock_file = open(_lock_file_path(), "a")
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_SH)
    except OSError:
        logger.debug("Could not mark a request in flight", exc_info=True)
        return
    _request.lock_file = lock_file


def request_finished():
    """The current thread's request has ended."""
    lock_file = getattr(_request, "lock_file", None)
    _request.lock_file = None
    if lock_file is not None:
        # closing the file drops its lock
        lock_file.close()


def requests_in_flight():
    """
    :return: Whether any process of the server is serving a request now; ``True``
        where that cannot be told
    :rtype: bool
    """
    if fcntl is None:
        return True
    try:
        with open(_lock_file_path(), "a") as lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
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


def someone_may_wait():
    """
    :return: Whether another writer may be waiting for the database: a request in
        flight, or another Kolibri job running
    :rtype: bool
    """
    return requests_in_flight() or other_jobs_running()
