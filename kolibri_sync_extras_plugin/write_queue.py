"""
The writers of one server process take SQLite's write lock in the order they ask.

SQLite lets one writer at a time into the database, and a writer that finds the
lock taken sleeps in its busy handler and looks again: after 1, 2, 5, 10 ... ms,
then every 100 ms. Nobody is woken when the lock is freed. With many writers at
once the lock goes to whoever looks next, often a newcomer still on its short
sleeps, while a writer that has waited long sleeps 100 ms at a time; and the lock
stands free while its waiters sleep. With a class set pushing at once, that is
where a slow request's time goes (``docs/many-clients.md``).

Within one process the plugin queues the writers of the main database before
SQLite sees them: a write transaction (Kolibri 0.19 begins every transaction
with ``BEGIN IMMEDIATE``, so every transaction is one) and a write outside a
transaction each wait their turn in a first-come queue, and the writer that ends
hands the turn to the next at once. SQLite's own lock and busy handler stay as
they are between processes (uwsgi's, ``kolibri services``).

A request's writers go ahead of the background's: its client waits for each
one, while a stage job's piece is one of many the client polls for. Stage jobs
hold most of the turn's time while a class set pushes, so in one line a
request's every write waited for the job pieces that came before it. A writer
that nobody waits for is put off for :data:`FairTurn.LONGEST_PUT_OFF_SECONDS`
at most, so the background still moves under a steady crowd of requests.

A request waiting in the queue is not one of the writers a stage job pauses for
between its pieces (:mod:`.requests_in_flight`): the job's next piece queues
behind it anyway, and pausing for a queue that newcomers keep long held the
jobs back for seconds.

The queue orders only what SQLite already serializes: a writer in the queue
would otherwise be waiting for the same lock. A writer that waits longer than
the database's busy timeout goes on to SQLite without its turn, as it would
have without the queue, so a writer the queue cannot serve still gets
SQLite's answer.
"""

import collections
import contextlib
import os
import threading
import time

from . import requests_in_flight

__all__ = [
    "install_write_queue",
    "main_database_turn",
    "give_turn_back",
    "transactions_begun_at_their_first_statement",
    "FairTurn",
]


class FairTurn:
    """
    A lock handed to its waiters in the order they asked for it, those that
    someone waits for (``urgent``) first, unless a waiter that nobody waits for
    has been put off for :data:`LONGEST_PUT_OFF_SECONDS`. A holder whose thread
    has ended without giving it back (nothing in Django lets that happen, but a
    turn never given back would stall every writer) loses it to the next.
    """

    #: How often a waiter looks whether the holder's thread is still alive
    LOOK_AT_HOLDER_SECONDS = 1.0
    #: How long a waiter that is not urgent may be put off by urgent newcomers:
    #: after that it is next, so work in the background still moves while a
    #: crowd of requests writes.
    LONGEST_PUT_OFF_SECONDS = 0.5

    def __init__(self):
        self._guard = threading.Lock()
        self._holder = None
        self._urgent = collections.deque()
        self._waiting = collections.deque()

    def acquire(self, timeout, urgent=False):
        """
        :param urgent: Whether someone waits for the writer (a request's client):
            it goes ahead of the waiters nobody waits for (background jobs)
        :return: Whether the turn was taken; ``False`` after ``timeout`` seconds
        """
        me = threading.current_thread()
        with self._guard:
            if self._holder is None and not self._urgent and not self._waiting:
                self._holder = me
                return True
            handed = threading.Event()
            line = self._urgent if urgent else self._waiting
            entry = (handed, me, time.monotonic())
            line.append(entry)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if handed.wait(max(0.0, min(left, self.LOOK_AT_HOLDER_SECONDS))):
                return True
            with self._guard:
                if handed.is_set():
                    return True
                if self._holder is not None and not self._holder.is_alive():
                    self._pass_on()
                    continue
                if left <= 0:
                    line.remove(entry)
                    return False

    def release(self):
        with self._guard:
            self._pass_on()

    def _pass_on(self):
        # the turn goes straight to the next waiter, never free in between
        line = self._urgent
        if not line or (
            self._waiting
            and time.monotonic() - self._waiting[0][2] >= self.LONGEST_PUT_OFF_SECONDS
        ):
            line = self._waiting
        if line:
            handed, waiter, _ = line.popleft()
            self._holder = waiter
            handed.set()
        else:
            self._holder = None

    @property
    def waiting(self):
        """How many writers wait for the turn."""
        with self._guard:
            return len(self._urgent) + len(self._waiting)

    @property
    def held(self):
        with self._guard:
            return self._holder is not None


_HOLDS_TURN = "_sync_extras_holds_write_turn"
_BEGIN_PENDING = "_sync_extras_begin_pending"
_STOCK_BEGIN = "_sync_extras_stock_begin"
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")

_turns = {}
_turns_guard = threading.Lock()


def _forget_turns():
    """A forked child starts with no writer of its own holding a turn."""
    global _turns_guard
    _turns_guard = threading.Lock()
    _turns.clear()


os.register_at_fork(after_in_child=_forget_turns)


def _turn_of(wrapper):
    name = wrapper.settings_dict.get("NAME")
    with _turns_guard:
        return _turns.setdefault(name, FairTurn())


def main_database_turn():
    """:return: The :class:`FairTurn` of this process's main database"""
    from django.db import connections

    return _turn_of(connections["default"])


def _timeout(wrapper):
    return float(wrapper.settings_dict.get("OPTIONS", {}).get("timeout", 5))


def _take_turn(wrapper):
    # past the busy timeout, the writer goes on to SQLite without the turn
    urgent = requests_in_flight.serving_a_request()
    if _turn_of(wrapper).acquire(_timeout(wrapper), urgent=urgent):
        setattr(wrapper, _HOLDS_TURN, True)


def give_turn_back(wrapper):
    """
    Give back the turn ``wrapper``'s thread holds, if any, even in the middle of
    its transaction: for a transaction that is not one of the server's writers
    (a test's own, open for the whole test).
    """
    if getattr(wrapper, _HOLDS_TURN, False):
        setattr(wrapper, _HOLDS_TURN, False)
        _turn_of(wrapper).release()


def _takes_the_lock(sql):
    """
    :return: ``"transaction"`` for a statement that begins a transaction holding
        the write lock, ``"statement"`` for a write, else ``None``
    """
    words = sql.lstrip()[:24].upper().split()
    if not words:
        return None
    if words[0] == "BEGIN" and words[1:2] in (["IMMEDIATE"], ["EXCLUSIVE"]):
        return "transaction"
    if words[0] in _WRITES:
        return "statement"
    return None


def _queued_statement(execute, sql, params, many, context):
    """
    Django's execute wrapper on the main database's connections: a writer outside
    a transaction waits for its turn first. A transaction keeps the turn until it
    commits or rolls back; a single write gives it back when it is through. A
    transaction whose beginning was put off begins now, before its first
    statement.
    """
    wrapper = context["connection"]
    if getattr(wrapper, _BEGIN_PENDING, False):
        setattr(wrapper, _BEGIN_PENDING, False)
        getattr(type(wrapper), _STOCK_BEGIN)(wrapper)
    raw = wrapper.connection
    takes = None
    if not getattr(wrapper, _HOLDS_TURN, False) and raw is not None:
        takes = None if raw.in_transaction else _takes_the_lock(str(sql))
    if takes is None:
        return execute(sql, params, many, context)
    _take_turn(wrapper)
    try:
        result = execute(sql, params, many, context)
    except BaseException:
        give_turn_back(wrapper)
        raise
    if takes == "statement":
        give_turn_back(wrapper)
    return result


def _give_back_as_transactions_end(cls):
    """A transaction's turn goes back when it commits, rolls back or is closed."""
    for name in ("_commit", "_rollback", "_close"):
        setattr(cls, name, _then_give_turn_back(getattr(cls, name)))


def _then_give_turn_back(method):
    def ending_the_transaction(self):
        # a transaction that never began has nothing to end: sqlite3's commit
        # and rollback do nothing outside one
        setattr(self, _BEGIN_PENDING, False)
        try:
            return method(self)
        finally:
            give_turn_back(self)

    return ending_the_transaction


# per thread: whether its transactions begin at their first statement
_put_off = threading.local()


@contextlib.contextmanager
def transactions_begun_at_their_first_statement():
    """
    In the block, a transaction of the main database begins (``BEGIN
    IMMEDIATE``, taking SQLite's write lock) just before its first statement
    rather than as its atomic block opens, and one that runs no statement never
    begins. Nothing runs on the connection between the two moments, so no
    statement sees a difference; what changes is that an empty transaction takes
    no turn at the lock.

    For code that opens transactions with nothing to write in them: Kolibri's
    notifications after a push open one on the main database for each record's
    notifications, which it writes to a database of their own (a class set's
    cleanups made some 7,000 such turns). Code that runs SQL on the raw sqlite3
    connection, past Django's cursors, must stay out of the block: its statements
    would run before the transaction begins.
    """
    before = getattr(_put_off, "active", False)
    _put_off.active = True
    try:
        yield
    finally:
        _put_off.active = before


def _begin_or_put_off(stock_begin):
    def begin(self):
        if getattr(_put_off, "active", False) and self.alias == "default":
            setattr(self, _BEGIN_PENDING, True)
            return
        stock_begin(self)

    return begin


def _queue_connection(sender, connection, **kwargs):
    """Run this connection's statements through the queue (``connection_created``)."""
    if (
        connection.alias == "default"
        and _queued_statement not in connection.execute_wrappers
    ):
        # outermost, whenever the connection opens: the wait in the queue is
        # outside every other wrapper's statement (see the module's doc)
        connection.execute_wrappers.insert(0, _queued_statement)


def install_write_queue():
    """
    Queue the writers of the main database, if it is SQLite under Kolibri's backend
    that begins every transaction at once (0.19 on); before that a transaction
    takes the lock at its first write, and the queue would not know when.
    """
    from django.db import connections
    from django.db.backends.signals import connection_created

    from .compat import immediate_sqlite_backend

    backend = immediate_sqlite_backend()
    if backend is None or not isinstance(connections["default"], backend):
        return
    if getattr(backend, "_sync_extras_queued", False):
        return
    _give_back_as_transactions_end(backend)
    stock_begin = backend._start_transaction_under_autocommit
    setattr(backend, _STOCK_BEGIN, stock_begin)
    backend._start_transaction_under_autocommit = _begin_or_put_off(stock_begin)
    backend._sync_extras_queued = True
    connection_created.connect(
        _queue_connection, dispatch_uid="sync_extras_write_queue"
    )
    # this thread's connection may be open already
    _queue_connection(None, connections["default"])
