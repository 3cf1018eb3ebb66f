"""
The writers of one server process take SQLite's write lock in the order they
asked for it, and every way a writer ends hands the turn on: a commit, a
rollback, a failed statement. Readers never wait for it, and a request waiting
in it is no writer a stage job pauses for. Without the queue, the writers below would meet SQLite's lock
instead: in the order of whoever looked last, or, on the suite's shared in-memory
database, with ``database table is locked``.
"""

import threading
import time

import pytest
from django.db import IntegrityError
from django.db import connection
from django.db import connections
from django.db import transaction
from django.test.utils import CaptureQueriesContext

from kolibri_sync_extras_plugin import requests_in_flight
from kolibri_sync_extras_plugin.compat import immediate_sqlite_backend
from kolibri_sync_extras_plugin.write_queue import FairTurn
from kolibri_sync_extras_plugin.write_queue import main_database_turn
from kolibri_sync_extras_plugin.write_queue import (
    transactions_begun_at_their_first_statement,
)

from ..helpers.constants import ALL_DATABASES

# committed for real: the writers are threads with connections of their own
pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

queued_here = pytest.mark.skipif(
    immediate_sqlite_backend() is None,
    reason="before Kolibri 0.19 a transaction takes SQLite's lock at its first write",
)


def _wait_until(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "waited {} s".format(seconds)
        time.sleep(0.005)


class _Writer(threading.Thread):
    """A request or job of the server: a thread with its own connection."""

    def __init__(self, work, *args):
        super().__init__(daemon=True)
        self.work = work
        self.args = args
        self.error = None

    def run(self):
        try:
            self.work(*self.args)
        except Exception as error:  # noqa: BLE001 - the test reads it
            self.error = error
        finally:
            connections.close_all()

    def finish(self):
        self.join(30)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


def _in_line_one_after_another(turn, work, names):
    """Start a thread doing ``work(name)`` for each name, each once the one before waits."""
    threads = []
    for count, name in enumerate(names, start=1):
        thread = _Writer(work, name)
        thread.start()
        threads.append(thread)
        _wait_until(lambda count=count: turn.waiting == count)
    return threads


# the turn itself ----------------------------------------------------------------


def test_fair_turn__waiters_take_it_in_the_order_they_asked():
    turn = FairTurn()
    assert turn.acquire(timeout=1)
    order = []

    def take(name):
        assert turn.acquire(timeout=10)
        order.append(name)
        turn.release()

    waiters = _in_line_one_after_another(turn, take, ("first", "second", "third"))
    turn.release()
    for waiter in waiters:
        waiter.finish()
    assert order == ["first", "second", "third"]
    assert not turn.held


def _taking_in_turn(turn, order):
    """A writer's work: take the turn (urgent for a request), note its name, go."""

    def take(name):
        assert turn.acquire(timeout=10, urgent=name.startswith("request"))
        order.append(name)
        turn.release()

    return take


def test_fair_turn__urgent_waiters__go_ahead_of_the_others_in_their_own_order():
    turn = FairTurn()
    assert turn.acquire(timeout=1)
    order = []
    take = _taking_in_turn(turn, order)

    waiters = _in_line_one_after_another(
        turn, take, ("job 1", "request 1", "job 2", "request 2")
    )
    turn.release()
    for waiter in waiters:
        waiter.finish()
    assert order == ["request 1", "request 2", "job 1", "job 2"]


def test_fair_turn__a_waiter_put_off_too_long__goes_next(monkeypatch):
    monkeypatch.setattr(FairTurn, "LONGEST_PUT_OFF_SECONDS", 0.2)
    turn = FairTurn()
    assert turn.acquire(timeout=1)
    order = []
    take = _taking_in_turn(turn, order)

    (job,) = _in_line_one_after_another(turn, take, ("job",))
    time.sleep(0.25)
    # requests keep coming: the job has been put off long enough
    requests = []
    for number in range(1, 3):
        requests.append(_Writer(take, "request {}".format(number)))
        requests[-1].start()
        _wait_until(lambda count=number + 1: turn.waiting == count)
    turn.release()
    for waiter in [job] + requests:
        waiter.finish()
    assert order == ["job", "request 1", "request 2"]


def test_fair_turn__an_urgent_waiter_that_gives_up__leaves_the_line():
    turn = FairTurn()
    turn.acquire(timeout=1)
    assert turn.acquire(timeout=0.05, urgent=True) is False
    assert turn.waiting == 0
    turn.release()
    assert not turn.held


def test_fair_turn__a_waiter_that_gives_up__leaves_the_line():
    turn = FairTurn()
    turn.acquire(timeout=1)
    assert turn.acquire(timeout=0.05) is False
    assert turn.waiting == 0
    turn.release()
    assert not turn.held


def test_fair_turn__a_holder_whose_thread_ended__loses_it(monkeypatch):
    monkeypatch.setattr(FairTurn, "LOOK_AT_HOLDER_SECONDS", 0.05)
    turn = FairTurn()
    gone = _Writer(turn.acquire, 1)
    gone.start()
    gone.finish()
    assert turn.held
    assert turn.acquire(timeout=5)
    turn.release()
    assert not turn.held


# the main database's writers ------------------------------------------------------

TABLE = "sync_extras_queue_writes"


@pytest.fixture
def writes_table(django_db_blocker):
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE {} (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " writer TEXT UNIQUE)".format(TABLE)
            )
        yield
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE {}".format(TABLE))


def _write(writer):
    with connections["default"].cursor() as cursor:
        cursor.execute("INSERT INTO {} (writer) VALUES (%s)".format(TABLE), [writer])


def _writers_in_order():
    with connection.cursor() as cursor:
        cursor.execute("SELECT writer FROM {} ORDER BY id".format(TABLE))
        return [writer for (writer,) in cursor.fetchall()]


@pytest.fixture
def transaction_held(writes_table):
    """A transaction in another thread that has written and waits to commit."""
    commit = threading.Event()

    def hold():
        with transaction.atomic():
            _write("holder")
            commit.wait(30)

    holder = _Writer(hold)
    holder.start()
    _wait_until(lambda: main_database_turn().held)
    yield commit
    commit.set()
    holder.finish()


@queued_here
def test_writers_waiting_for_a_transaction__write_in_the_order_they_came(
    transaction_held,
):
    turn = main_database_turn()
    writers = _in_line_one_after_another(turn, _write, ("first", "second", "third"))

    transaction_held.set()
    for writer in writers:
        writer.finish()
    assert _writers_in_order() == ["holder", "first", "second", "third"]
    assert not turn.held


def _as_a_request(work):
    """``work``, done the way a request's thread does it."""

    def serving(*args):
        requests_in_flight.request_started()
        try:
            work(*args)
        finally:
            requests_in_flight.request_finished()

    return serving


@queued_here
def test_a_request_s_writer__goes_ahead_of_stage_jobs_that_came_before(
    transaction_held,
):
    """A request's client waits for each of its writes; a job's piece is one of
    many the client polls for."""
    turn = main_database_turn()
    job = _Writer(_write, "job")
    job.start()
    _wait_until(lambda: turn.waiting == 1)
    request = _Writer(_as_a_request(_write), "request")
    request.start()
    _wait_until(lambda: turn.waiting == 2)

    transaction_held.set()
    job.finish()
    request.finish()
    assert _writers_in_order() == ["holder", "request", "job"]


@queued_here
def test_a_read__does_not_wait_for_the_turn(transaction_held):
    def read():
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM morango_transfersession")

    reader = _Writer(read)
    reader.start()
    reader.finish()
    assert main_database_turn().held


@queued_here
def test_a_transaction_that_fails__gives_the_turn_back(writes_table):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            _write("rolled back")
            raise RuntimeError("the request failed")
    assert not main_database_turn().held
    assert _writers_in_order() == []


@queued_here
def test_a_failed_write_outside_a_transaction__gives_the_turn_back(writes_table):
    _write("once")
    with pytest.raises(IntegrityError):
        _write("once")
    assert not main_database_turn().held


@queued_here
def test_a_request_waiting_in_the_queue__is_no_writer_a_stage_job_pauses_for(
    transaction_held,
):
    # a stage job's next piece queues behind the request anyway; pausing the job
    # for everyone in the queue would hold it back while newcomers keep coming
    request = _Writer(_as_a_request(_write), "request")
    request.start()
    _wait_until(lambda: main_database_turn().waiting == 1)
    seen_while_queued = requests_in_flight.writers_waiting()

    transaction_held.set()
    request.finish()
    assert not seen_while_queued
    assert _writers_in_order() == ["holder", "request"]


# transactions begun at their first statement -------------------------------------


def _in_a_thread_while_held(work):
    """Run ``work`` in a thread of its own; :return: whether it ended within 2 s."""
    thread = _Writer(work)
    thread.start()
    thread.join(2)
    return not thread.is_alive(), thread


@queued_here
def test_put_off_begin__an_empty_transaction__takes_no_turn(transaction_held):
    """Kolibri's notifications open transactions on the main database that run
    nothing there: in the block they do not wait for the writer holding the turn."""

    def empty_transaction():
        with transactions_begun_at_their_first_statement():
            with transaction.atomic():
                pass

    ended, thread = _in_a_thread_while_held(empty_transaction)

    assert ended
    thread.finish()
    assert main_database_turn().held  # still the holder's


@queued_here
def test_stock_begin__an_empty_transaction__waits_for_the_turn(transaction_held):
    def empty_transaction():
        with transaction.atomic():
            pass

    ended, thread = _in_a_thread_while_held(empty_transaction)

    assert not ended
    transaction_held.set()
    thread.finish()


@queued_here
def test_put_off_begin__begins_before_the_first_statement__which_waits_its_turn(
    transaction_held,
):
    queries = []

    def read_then_write():
        with transactions_begun_at_their_first_statement():
            with CaptureQueriesContext(connections["default"]) as captured:
                with transaction.atomic():
                    with connections["default"].cursor() as cursor:
                        cursor.execute("SELECT count(*) FROM {}".format(TABLE))
                    _write("put off")
            queries.extend(query["sql"] for query in captured.captured_queries)

    ended, thread = _in_a_thread_while_held(read_then_write)
    assert not ended  # its first statement waits for the holder

    transaction_held.set()
    thread.finish()
    assert queries[0] == "BEGIN IMMEDIATE"
    assert queries[1].startswith("SELECT count(*)")
    assert _writers_in_order() == ["holder", "put off"]
    assert not main_database_turn().held


@queued_here
def test_put_off_begin__rolled_back__writes_nothing_and_gives_the_turn_back(
    writes_table,
):
    with transactions_begun_at_their_first_statement():
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                _write("rolled back")
                raise RuntimeError("the listener failed")
        with transaction.atomic():
            pass

    assert _writers_in_order() == []
    assert not main_database_turn().held


@queued_here
def test_put_off_begin__nested_blocks__one_transaction_with_its_savepoint(
    writes_table,
):
    with transactions_begun_at_their_first_statement():
        with CaptureQueriesContext(connection) as captured:
            with transaction.atomic():
                with transaction.atomic():
                    _write("inner")
                _write("outer")

    sql = [query["sql"] for query in captured.captured_queries]
    assert sql[0] == "BEGIN IMMEDIATE"
    assert sql[1].startswith("SAVEPOINT")
    assert _writers_in_order() == ["inner", "outer"]
    assert not main_database_turn().held
