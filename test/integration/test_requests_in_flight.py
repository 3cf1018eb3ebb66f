"""
A stage job writing in pieces on SQLite pauses between pieces only while someone
waits for the write lock: a request of any of the server's processes running a
statement that needs it, until that statement is through, or another Kolibri job
running. Alone, or beside clients that poll and requests that read, it runs its
pieces back to back.
"""

import subprocess
import sys
import threading
import time

import pytest
from django.core.signals import request_finished
from django.core.signals import request_started
from django.db import connection
from kolibri.core.tasks.job import State
from kolibri.utils.conf import KOLIBRI_HOME

from kolibri_sync_extras_plugin import requests_in_flight
from kolibri_sync_extras_plugin.compat import STATEMENTS_CAN_BE_WRAPPED
from kolibri_sync_extras_plugin.piecewise.runner import pause_after_piece
from kolibri_sync_extras_plugin.requests_in_flight import MAX_WRITER_WAIT_SECONDS
from kolibri_sync_extras_plugin.requests_in_flight import REQUESTS_LOCK_FILE_NAME
from kolibri_sync_extras_plugin.requests_in_flight import WRITERS_LOCK_FILE_NAME

from ..helpers.constants import ALL_DATABASES
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

sqlite_only = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="only SQLite's single lock is paused for"
)


watches_statements = pytest.mark.skipif(
    not STATEMENTS_CAN_BE_WRAPPED,
    reason="Kolibri 0.16's Django 1.11 cannot watch single statements",
)


@pytest.fixture
def no_other_jobs(monkeypatch):
    monkeypatch.setattr(requests_in_flight, "other_jobs_running", lambda: False)


class _RequestInAnotherThread:
    """
    A request served on another thread, held open until :meth:`finish`. With
    ``statement``, it runs that statement on Kolibri's database while it is served;
    with ``lock_wait`` as well, the statement first waits until that event is set,
    as a statement waits for SQLite's write lock (the test database is in memory,
    where no connection waits for another's lock).
    """

    def __init__(self, statement=None, lock_wait=None):
        self.statement = statement
        self.lock_wait = lock_wait
        self.statement_done = threading.Event()
        self._started = threading.Event()
        self._finish = threading.Event()
        self._thread = threading.Thread(target=self._serve)

    def _serve(self):
        request_started.send(sender=self.__class__, environ={})
        try:
            if self.statement is not None:
                self._run_statement()
            self._started.set()
            self._finish.wait(30)
        finally:
            request_finished.send(sender=self.__class__)
            connection.close()

    def _run_statement(self):
        with connection.cursor() as cursor:
            # a table of this connection's own: no other connection's lock on it
            cursor.execute("CREATE TEMP TABLE IF NOT EXISTS written (x)")
        with connection.execute_wrapper(self._wait_for_lock):
            with connection.cursor() as cursor:
                cursor.execute(self.statement)

    def _wait_for_lock(self, execute, sql, params, many, context):
        if self.lock_wait is not None:
            # the statement has started, and waits for the "lock"
            self._started.set()
            self.lock_wait.wait(30)
        result = execute(sql, params, many, context)
        # set while the statement still counts as a writer, so whoever sees the
        # writer gone sees this set
        self.statement_done.set()
        return result

    def __enter__(self):
        self._thread.start()
        assert self._started.wait(30)
        return self

    def finish(self):
        if self.lock_wait is not None:
            self.lock_wait.set()
        self._finish.set()
        self._thread.join(30)

    def __exit__(self, *exc):
        self.finish()


def test_no_request_in_flight__none_seen():
    assert not requests_in_flight.requests_in_flight()


def test_request_being_served__seen_until_it_finishes():
    with _RequestInAnotherThread() as request:
        seen_while_served = requests_in_flight.requests_in_flight()
        request.finish()

        assert seen_while_served
        assert not requests_in_flight.requests_in_flight()


def _hold_shared_lock_in_another_process(name):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "f = open(os.path.join(sys.argv[1], sys.argv[2]), 'a')\n"
            "fcntl.flock(f.fileno(), fcntl.LOCK_SH)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            KOLIBRI_HOME,
            name,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize(
    "lock_file_name, seen",
    [
        (REQUESTS_LOCK_FILE_NAME, requests_in_flight.requests_in_flight),
        (WRITERS_LOCK_FILE_NAME, requests_in_flight.writers_waiting),
    ],
    ids=["request_in_flight", "writer_waiting"],
)
def test_mark_of_another_process__seen_until_the_process_dies(lock_file_name, seen):
    holder = _hold_shared_lock_in_another_process(lock_file_name)
    try:
        seen_while_alive = seen()
    finally:
        holder.kill()
        holder.wait(30)

    assert seen_while_alive
    assert not seen()


@sqlite_only
def test_pause_after_piece__nobody_waiting__goes_on_at_once(no_other_jobs):
    started = time.monotonic()

    paused = pause_after_piece(0.2)

    assert not paused
    assert time.monotonic() - started < 0.1


@watches_statements
@sqlite_only
def test_request_running_a_write__seen_as_a_waiting_writer_until_it_is_through():
    lock_wait = threading.Event()
    with _RequestInAnotherThread(
        "INSERT INTO written VALUES (1)", lock_wait
    ) as request:
        seen_while_waiting = requests_in_flight.writers_waiting()
        lock_wait.set()
        assert request.statement_done.wait(30)
        # the request is still served: only its statement is through
        gone_while_served = _within(5, lambda: not requests_in_flight.writers_waiting())

    assert seen_while_waiting
    assert gone_while_served


def _within(seconds, condition):
    """Whether ``condition()`` comes true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@watches_statements
def test_request_only_reading__no_writer_waiting():
    lock_wait = threading.Event()
    with _RequestInAnotherThread("SELECT COUNT(*) FROM written", lock_wait):
        seen_while_reading = requests_in_flight.writers_waiting()

    assert not seen_while_reading


def test_a_write_outside_any_request__not_marked():
    """A job's own writes, and the job checker's, never make a job pause."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS written_here (x)")
        cursor.execute("INSERT INTO written_here VALUES (1)")

    assert requests_in_flight._mark_writes not in getattr(
        connection, "execute_wrappers", []
    )
    assert not requests_in_flight.writers_waiting()


@watches_statements
def test_request_finished__its_writes_no_longer_marked():
    wrappers_after = []

    def serve():
        request_started.send(sender=None, environ={})
        request_finished.send(sender=None)
        wrappers_after.extend(connection.execute_wrappers)
        connection.close()

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(30)

    assert requests_in_flight._mark_writes not in wrappers_after


@watches_statements
@sqlite_only
def test_pause_after_piece__request_in_flight_that_does_not_write__goes_on_at_once(
    no_other_jobs,
):
    """A client's poll in flight costs a job nothing."""
    with _RequestInAnotherThread():
        started = time.monotonic()
        paused = pause_after_piece(0.1)
        took = time.monotonic() - started

    assert not paused
    assert took < MAX_WRITER_WAIT_SECONDS


@watches_statements
@sqlite_only
def test_pause_after_piece__writer_waiting__leaves_the_lock_free_until_it_is_in(
    no_other_jobs, monkeypatch
):
    # a bound no busy machine reaches: the pause ends because the writer is in
    monkeypatch.setattr(requests_in_flight, "MAX_WRITER_WAIT_SECONDS", 30)
    lock_wait = threading.Event()
    with _RequestInAnotherThread(
        "INSERT INTO written VALUES (1)", lock_wait
    ) as request:
        threading.Timer(0.05, lock_wait.set).start()
        started = time.monotonic()
        paused = pause_after_piece(0.1)
        took = time.monotonic() - started
        writer_was_in = request.statement_done.is_set()

    assert paused
    assert writer_was_in
    # it ended when the writer was in (0.05 s), not at the bound
    assert took < 5


@watches_statements
@sqlite_only
def test_pause_after_piece__writer_that_never_gets_in__pause_is_bounded(
    no_other_jobs,
):
    lock_wait = threading.Event()
    with _RequestInAnotherThread("INSERT INTO written VALUES (1)", lock_wait):
        started = time.monotonic()
        paused = pause_after_piece(0.1)
        took = time.monotonic() - started

    assert paused
    assert MAX_WRITER_WAIT_SECONDS <= took < MAX_WRITER_WAIT_SECONDS + 1


@pytest.mark.skipif(
    STATEMENTS_CAN_BE_WRAPPED, reason="Django 2.0 on watches single statements"
)
@sqlite_only
def test_statements_not_watchable__whole_request_counts_as_a_waiting_writer(
    no_other_jobs,
):
    """Kolibri 0.16: a job pauses for any request in flight, as it always did."""
    with _RequestInAnotherThread():
        seen_while_served = requests_in_flight.writers_waiting()
        paused = pause_after_piece(0.05)

    assert seen_while_served
    assert paused
    assert not requests_in_flight.writers_waiting()


@sqlite_only
def test_pause_after_piece__another_kolibri_job_running__leaves_the_lock_free(
    monkeypatch,
):
    monkeypatch.setattr(requests_in_flight, "other_jobs_running", lambda: True)

    assert pause_after_piece(0.05)


@pytest.fixture
def fresh_look_at_jobs(monkeypatch):
    monkeypatch.setitem(requests_in_flight._jobs_look, "at", None)


def test_other_jobs_running__a_kolibri_job_running__seen(fresh_look_at_jobs):
    from kolibri.core.deviceadmin.tasks import streamed_cache_cleanup

    job_id = streamed_cache_cleanup.enqueue()
    update_job_row(job_id, state=State.RUNNING)

    assert requests_in_flight.other_jobs_running()


def test_other_jobs_running__only_stage_jobs_running__none_seen(
    fresh_look_at_jobs, pull_at_serializing
):
    [job] = queued_stage_jobs()
    update_job_row(job.job_id, state=State.RUNNING)

    assert not requests_in_flight.other_jobs_running()
