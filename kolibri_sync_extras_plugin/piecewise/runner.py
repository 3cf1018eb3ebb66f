"""
The piece runner that serializing and deserializing in pieces share: each piece
its own short transaction, sized by time, tried again alone when another writer
gets in its way, reported, and followed on SQLite by a pause that leaves the
write lock free while a request waits for it.
"""

import contextlib
import logging
import threading
import time

from django.db import DatabaseError
from django.db import connection
from django.db import transaction
from django.dispatch import Signal

from .. import requests_in_flight
from ..conflicts import is_transient_database_error
from ..errors import RequestBudgetSpent
from .partition_locks import partitions_locked_for_piece
from .support import _begin_transaction

logger = logging.getLogger(__name__)

__all__ = [
    "PIECE_COMMITTED",
    "TARGET_PIECE_SECONDS",
    "PieceRun",
    "batches",
    "next_piece_size",
    "pause_after_piece",
    "pieces_within",
]

#: Sent after each piece commits, on the thread that ran it, with the stage whose
#: work it did as sender (``deserializing`` here, ``serializing`` from
#: :mod:`.serialize`), ``records`` (how many records the piece worked on)
#: and ``seconds`` (how long its transaction took): the moment to report
#: progress, with no database transaction open.
PIECE_COMMITTED = Signal()

#: How long one piece's transaction should hold the write lock, in seconds.
TARGET_PIECE_SECONDS = 0.1
#: On SQLite, while a Kolibri job of another task runs (it may write without
#: saying so), how long to leave the write lock free after each piece, as a share
#: of the piece's own time, and its bounds in seconds. SQLite lets a waiting
#: writer in only when it happens to look while the lock is free (a waiting
#: connection looks again every 100 ms at most), so a job that began its next
#: piece at once would keep other writers out as surely as one long transaction.
PAUSE_SHARE = 1.0
MIN_PAUSE_SECONDS = 0.02
MAX_PAUSE_SECONDS = 0.2

#: How many times a piece is tried when another writer gets in its way, and the
#: pause before each new attempt (growing with the attempts, up to the maximum).
PIECE_ATTEMPTS = 20
#: In a request, whose client waits, fewer: the stage is tried again as a whole
#: (see :mod:`kolibri_sync_extras_plugin.request.operation`).
REQUEST_PIECE_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 0.02
MAX_RETRY_PAUSE_SECONDS = 0.5

#: Records in the first piece of each model, before pieces are sized by time
#: (models differ tenfold in how long a record takes).
FIRST_PIECE_RECORDS = 10
#: Bounds on the records in one piece (the upper one stays below SQLite's limit
#: on query parameters).
MIN_PIECE_RECORDS = 5
MAX_PIECE_RECORDS = 500


# per thread: when the pieces of a stage run in the request must stop, or None
_request_budget = threading.local()


@contextlib.contextmanager
def pieces_within(seconds):
    """
    In the block, a piece that commits more than ``seconds`` after it began raises
    :class:`~kolibri_sync_extras_plugin.errors.RequestBudgetSpent`: a stage run in
    the request does not pause for other writers, and a server busy with many
    devices can make its few hundred records last many seconds, while its client
    and every other writer wait. What the committed pieces did stays done; the
    stage, run again as a whole in a job, finds it done (serializing clears the
    dirty bits it serialized, deserializing the dirty flags of what it applied).
    """
    _request_budget.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _request_budget.deadline = None


def _check_request_budget(records, what):
    deadline = getattr(_request_budget, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise RequestBudgetSpent(
            "a piece of {} {} records ended past the request's budget".format(
                records, what
            )
        )


def next_piece_size(records, seconds):
    """
    :return: How many records the next piece should take for its transaction to
        last about :data:`TARGET_PIECE_SECONDS`, after a piece of ``records`` took
        ``seconds``: at most twice as many, as one quick piece may be luck
    :rtype: int
    """
    scaled = int(records * TARGET_PIECE_SECONDS / max(seconds, 0.001))
    scaled = min(scaled, 2 * max(records, MIN_PIECE_RECORDS))
    return max(MIN_PIECE_RECORDS, min(MAX_PIECE_RECORDS, scaled))


def pause_after_piece(seconds):
    """
    On SQLite, leave the write lock free after a piece that held it for
    ``seconds`` while a request waits for it, until it is in (see
    :func:`~kolibri_sync_extras_plugin.requests_in_flight.let_waiting_writers_in`),
    or for a share of the piece's time while another Kolibri job runs. Otherwise,
    and on other databases, go on at once: a job pays no pause for a client that
    polls, or a request that only reads.

    :return: Whether it paused
    :rtype: bool
    """
    if connection.vendor != "sqlite":
        return False
    if requests_in_flight.other_jobs_running():
        time.sleep(
            min(MAX_PAUSE_SECONDS, max(MIN_PAUSE_SECONDS, seconds * PAUSE_SHARE))
        )
        return True
    return requests_in_flight.let_waiting_writers_in()


def batches(ids, size):
    """Yield slices of ``ids``; ``size`` is read again before each slice."""
    start = 0
    while start < len(ids):
        end = start + size()
        yield ids[start:end]
        start = end


class PieceRun:
    """
    What a run in pieces keeps from piece to piece: the counts and the longest
    piece, and the size of the next one. :meth:`commit_piece` runs one piece in a
    transaction of its own, as morango begins its own, reports it and then leaves
    the lock free (see :func:`pause_after_piece`).

    A piece that meets another writer (SQLite's lock still busy, a PostgreSQL
    serialization conflict with a user's request) is rolled back and tried again
    on its own, up to :data:`PIECE_ATTEMPTS` times: a conflict costs its piece,
    never the stage. What the run keeps from piece to piece is put back as it was
    before the failed attempt (see :meth:`_kept`).
    """

    #: The stage that :data:`PIECE_COMMITTED` names as its sender
    stage = None

    def __init__(self, profile, sync_filter, on_piece, pause=True):
        self.profile = profile
        self.sync_filter = sync_filter
        self.on_piece = on_piece
        self.pause = pause
        self.records = 0
        self.pieces = 0
        self.retries = 0
        self.longest = 0.0
        #: seconds spent leaving the lock free after pieces
        self.paused = 0.0
        #: seconds the committed pieces waited to begin their transactions: on
        #: SQLite, for another writer's transaction to end
        self.lock_waited = 0.0
        self._size = FIRST_PIECE_RECORDS
        self._cpu_started = time.thread_time()

    def commit_piece(self, work, records, what, counted=None):
        """
        :param work: Does the piece's writes
        :param records: How many records or rows the piece works on
        :param what: Names them in the log
        :param counted: How many of them progress counts; all of them by default
        :return: What ``work`` returned
        """
        attempts = PIECE_ATTEMPTS if self.pause else REQUEST_PIECE_ATTEMPTS
        for attempt in range(1, attempts + 1):
            kept = self._kept()
            try:
                with partitions_locked_for_piece(self.sync_filter):
                    # timed once the lock is the piece's: sizes follow the work
                    started = time.monotonic()
                    with _own_savepoint_if_nested():
                        with _begin_transaction(self.sync_filter, isolated=True):
                            began = time.monotonic()
                            result = work()
                    elapsed = time.monotonic() - started
            except DatabaseError as e:
                if attempt == attempts or not is_transient_database_error(e):
                    raise
                self._restore(kept)
                self.retries += 1
                logger.debug(
                    "Piece of %d %s records met another writer (%s); trying it again",
                    records,
                    what,
                    e,
                )
                time.sleep(min(MAX_RETRY_PAUSE_SECONDS, RETRY_PAUSE_SECONDS * attempt))
                continue
            break
        self.pieces += 1
        self.records += records
        self.longest = max(self.longest, elapsed)
        self.lock_waited += began - started
        logger.debug(
            "Piece of %d %s records held the database %.3fs", records, what, elapsed
        )
        self._size = next_piece_size(records, elapsed)
        PIECE_COMMITTED.send(
            sender=self.stage,
            records=records if counted is None else counted,
            seconds=elapsed,
        )
        if self.on_piece is not None:
            self.on_piece(records, elapsed)
        _check_request_budget(records, what)
        if self.pause:
            pause_started = time.monotonic()
            if pause_after_piece(elapsed):
                self.paused += time.monotonic() - pause_started
        return result

    def log_end(self, done):
        """
        One line on the whole run; at INFO in a job, or if another writer got in
        its way.
        """
        logger.log(
            logging.INFO if self.retries or self.pause else logging.DEBUG,
            "%s %d records in %d pieces (%d tried again after meeting another "
            "writer); the longest held the database %.3fs; %.2fs left the "
            "database to other writers; %.2fs waiting for them; %.2fs of CPU",
            done,
            self.records,
            self.pieces,
            self.retries,
            self.longest,
            self.paused,
            self.lock_waited,
            time.thread_time() - self._cpu_started,
        )

    def _kept(self):
        """What the run keeps between pieces, as a piece's failed attempt must find it."""
        return None

    def _restore(self, kept):
        """Put back what :meth:`_kept` returned."""

    def restart_sizing(self):
        """Size the next piece afresh: a new model's records take their own time."""
        self._size = FIRST_PIECE_RECORDS

    def _piece_size(self):
        return self._size


def _own_savepoint_if_nested():
    """
    Inside a caller's transaction (a test's), a savepoint of the piece's own, so a
    failed attempt rolls back the piece alone: morango's transaction joins an
    outer one without a savepoint. Outside one, as jobs run, nothing more.
    """
    if connection.in_atomic_block:
        return transaction.atomic()
    return contextlib.nullcontext()
