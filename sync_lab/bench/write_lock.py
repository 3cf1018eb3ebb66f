"""
How long a writer waits for a SQLite server's write lock while clients sync.

Kolibri begins every outermost transaction on SQLite ``BEGIN IMMEDIATE``, so a
request that writes waits while any other transaction holds the lock: the wait a
request sees is the length of the longest transaction in its way. A
:class:`WriteLockProbe` measures exactly that, from outside the server: a thread
that, every :data:`PROBE_INTERVAL_SECONDS`, opens the server's database, begins
an immediate transaction, notes how long that took, and commits at once. Its
waits include SQLite's own busy back-off (up to 0.1 s between looks), as a real
request's do.

While it waits, the probe holds shared locks on the server's
``sync_extras_requests.lock`` and ``sync_extras_writers.lock``, as a request of
the server does while it waits to write: a stage job with the plugin leaves the
lock free after a piece while a writer waits (see
:mod:`kolibri_sync_extras_plugin.requests_in_flight`), so the probe waits as a
request that writes would, not as an outsider the server cannot see.

A long wait is told apart by what was running then: the stage jobs the server
logged as running (:func:`background_stage_spans`, from the plugin's log lines)
and the requests the timing proxy saw in flight.
"""

import contextlib
import datetime
import fcntl
import os
import re
import sqlite3
import threading
import time

from kolibri_sync_extras_plugin.requests_in_flight import REQUESTS_LOCK_FILE_NAME
from kolibri_sync_extras_plugin.requests_in_flight import WRITERS_LOCK_FILE_NAME

__all__ = [
    "PROBE_INTERVAL_SECONDS",
    "LockWait",
    "WriteLockProbe",
    "background_stage_spans",
    "describe_wait",
]

#: How long the probe sleeps between two looks at the lock.
PROBE_INTERVAL_SECONDS = 0.05

_STAGE_LINE = re.compile(
    r"^\w+ (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ "
    r"Stage (?P<stage>\w+) of transfer session (?P<session>\w+) "
    r"(?P<event>started|completed|failed)"
)


class LockWait:
    """One look at the lock: when the probe asked for it, and how long it waited."""

    __slots__ = ("asked", "seconds")

    def __init__(self, asked, seconds):
        #: Unix time at which the probe began waiting
        self.asked = asked
        self.seconds = seconds

    @property
    def got(self):
        return self.asked + self.seconds


class WriteLockProbe:
    """
    Waits for the write lock of the SQLite database at ``path`` over and over, in a
    thread, from ``with`` until the block ends.

    :param path: The server's ``db.sqlite3``
    """

    def __init__(self, path, interval=PROBE_INTERVAL_SECONDS):
        self.path = str(path)
        self.interval = interval
        #: Every :class:`LockWait`, in order
        self.waits = []
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    def __enter__(self):
        self._thread = threading.Thread(
            target=self._run, name="write-lock-probe", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self):
        try:
            connection = sqlite3.connect(self.path, timeout=600, isolation_level=None)
        except sqlite3.Error as e:
            self.error = e
            return
        try:
            while not self._stop.is_set():
                asked = time.time()
                started = time.monotonic()
                with self._in_flight():
                    connection.execute("BEGIN IMMEDIATE")
                    waited = time.monotonic() - started
                    connection.execute("COMMIT")
                self.waits.append(LockWait(asked, waited))
                self._stop.wait(self.interval)
        except sqlite3.Error as e:
            self.error = e
        finally:
            connection.close()

    @contextlib.contextmanager
    def _in_flight(self):
        """Count as a request in flight on the server that waits to write."""
        home = os.path.dirname(self.path)
        with contextlib.ExitStack() as held:
            for name in (REQUESTS_LOCK_FILE_NAME, WRITERS_LOCK_FILE_NAME):
                lock_file = held.enter_context(open(os.path.join(home, name), "a"))
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_SH)
            yield

    def clear(self):
        self.waits = []

    def longest(self, count=1):
        """:return: The ``count`` longest waits, longest first. :rtype: list"""
        return sorted(self.waits, key=lambda w: -w.seconds)[:count]

    def over(self, seconds):
        return sum(1 for wait in self.waits if wait.seconds > seconds)


def background_stage_spans(log_path):
    """
    The stage jobs a server with the plugin ran, from its log.

    :return: ``(stage, transfer session id, started, ended)`` for each, in Unix
        time; ``ended`` is ``None`` for a job still running when the log was read
    :rtype: list
    """
    spans = {}
    try:
        with open(str(log_path), encoding="utf-8", errors="replace") as log:
            for line in log:
                match = _STAGE_LINE.match(line)
                if not match:
                    continue
                when = datetime.datetime.strptime(
                    match.group("when"), "%Y-%m-%d %H:%M:%S,%f"
                ).timestamp()
                key = (match.group("stage"), match.group("session"))
                if match.group("event") == "started":
                    spans[key] = [key[0], key[1], when, None]
                elif key in spans:
                    spans[key][3] = when
    except OSError:
        return []
    return [tuple(span) for span in spans.values()]


def describe_wait(wait, spans, exchanges):
    """
    What was running while the probe waited: stage jobs from ``spans`` (see
    :func:`background_stage_spans`) and requests from ``exchanges`` (the timing
    proxy's), each named once with how many there were.

    :type wait: LockWait
    :rtype: str
    """
    names = []
    for stage, _, started, ended in spans:
        if started < wait.got and (ended is None or ended > wait.asked):
            names.append("{} job".format(stage))
    for exchange in exchanges:
        if exchange.started < wait.got and exchange.ended > wait.asked:
            names.append(exchange.kind)
    counted = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    return ", ".join(
        name if count == 1 else "{} x{}".format(name, count)
        for name, count in sorted(counted.items(), key=lambda item: -item[1])
    )
