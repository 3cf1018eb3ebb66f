"""
Locks that every process of the server respects: one for the few decisions that
must be taken one at a time on the whole server (the caps on stage jobs), and
places that any process can count (the pull pages being answered).

A server is rarely one process: ``kolibri-server`` runs Kolibri's WSGI application
in several uwsgi processes beside ``kolibri services``, and a PostgreSQL server
may have its web processes on several hosts. A ``threading.Lock`` orders only the
threads of one of them. This lock is two locks taken in turn:

- an exclusive ``flock`` on a file in ``KOLIBRI_HOME``, for the processes of this
  host (the operating system drops it when a process dies);
- where job storage is on PostgreSQL, a session advisory lock on job storage's
  database, for the processes of other hosts (PostgreSQL drops it when the
  connection ends).

SQLite's job storage is a file on one host, so the file lock is all it needs.
"""

import contextlib
import hashlib
import logging
import os
import threading

try:
    import fcntl
except ImportError:  # Windows: one server process
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["server_wide_lock", "lock_file_path", "advisory_key", "HostWidePlaces"]

# the file locks of this process, one per name: flock locks of two open file
# descriptions exclude each other even within a process, but a thread lock in
# front keeps the threads of one process from queueing on the file one by one
_thread_locks = {}
_thread_locks_guard = threading.Lock()


def lock_file_path(name):
    """:return: The path of the lock file for ``name`` in ``KOLIBRI_HOME``"""
    from kolibri.utils.conf import KOLIBRI_HOME

    return os.path.join(KOLIBRI_HOME, "sync_extras_{}.lock".format(name))


def _thread_lock(name):
    with _thread_locks_guard:
        return _thread_locks.setdefault(name, threading.Lock())


def advisory_key(name):
    """A signed 64-bit key for PostgreSQL's advisory locks, the same in every process."""
    digest = hashlib.sha256("kolibri_sync_extras:{}".format(name).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _host_lock(name):
    if fcntl is None:
        yield
        return
    with open(lock_file_path(name), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _database_lock(name):
    from .compat import job_storage_advisory_connection

    with job_storage_advisory_connection() as execute:
        if execute is None:
            # SQLite: one host, the file lock orders everyone
            yield
            return
        key = advisory_key(name)
        execute("SELECT pg_advisory_lock(%s)", key)
        try:
            yield
        finally:
            try:
                execute("SELECT pg_advisory_unlock(%s)", key)
            except Exception:
                # the connection is closed as the block ends, dropping the lock
                logger.warning("Could not release lock %s", name, exc_info=True)


@contextlib.contextmanager
def server_wide_lock(name):
    """
    Hold the server-wide lock ``name`` while the block runs: no other thread or
    process of the server holds it meanwhile.

    :param name: What the lock orders, e.g. ``"stage_job_caps"``
    """
    with _thread_lock(name), _host_lock(name), _database_lock(name):
        yield


class HostWidePlaces:
    """
    Places that the threads of every process of this host take and give back, and
    can count: each is a file in ``KOLIBRI_HOME`` that its holder keeps an
    exclusive ``flock`` on. A process that dies gives its places back with its
    locks. Without ``flock`` (Windows) only this process's places are counted.
    """

    def __init__(self, name, size):
        """
        :param name: What the places are for, e.g. ``"pull_pages"``
        :param size: How many there are; more holders than that go uncounted
        """
        self.name = name
        self.size = size
        self._local = {"taken": 0}
        self._local_lock = threading.Lock()

    def _path(self, index):
        directory = os.path.dirname(lock_file_path(self.name))
        folder = os.path.join(directory, "sync_extras_{}".format(self.name))
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, "{}.lock".format(index))

    def take(self):
        """
        Take a free place.

        :return: What to give to :meth:`give_back`; ``None`` if every place is taken
        """
        if fcntl is None:
            with self._local_lock:
                self._local["taken"] += 1
            return True
        for index in range(self.size):
            place = open(self._path(index), "a")
            try:
                fcntl.flock(place.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                place.close()
                continue
            return place
        return None

    def give_back(self, place):
        """Give back a place that :meth:`take` returned; closing drops its lock."""
        if place is None:
            return
        if fcntl is None:
            with self._local_lock:
                self._local["taken"] = max(0, self._local["taken"] - 1)
            return
        place.close()

    def taken(self):
        """:return: How many places are held now, by any process of this host"""
        if fcntl is None:
            return self._local["taken"]
        held = 0
        for index in range(self.size):
            with open(self._path(index), "a") as place:
                try:
                    fcntl.flock(place.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    held += 1
        return held
