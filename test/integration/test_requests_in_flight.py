"""
A stage job writing in pieces on SQLite pauses between pieces only while someone
may wait for the write lock: a request in flight in any of the server's
processes, or another Kolibri job running. Alone, it runs its pieces back to back.
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
from kolibri_sync_extras_plugin.piecewise.runner import pause_after_piece
from kolibri_sync_extras_plugin.requests_in_flight import REQUESTS_LOCK_FILE_NAME

from ..helpers.constants import ALL_DATABASES
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

sqlite_only = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="only SQLite's single lock is paused for"
)


@pytest.fixture
def no_other_jobs(monkeypatch):
    monkeypatch.setattr(requests_in_flight, "other_jobs_running", lambda: False)


class _RequestInAnotherThread:
    """A request served on another thread, held open until :meth:`finish`."""

    def __init__(self):
        self._started = threading.Event()
        self._finish = threading.Event()
        self._thread = threading.Thread(target=self._serve)

    def _serve(self):
        request_started.send(sender=self.__class__, environ={})
        self._started.set()
        self._finish.wait(30)
        request_finished.send(sender=self.__class__)

    def __enter__(self):
        self._thread.start()
        assert self._started.wait(30)
        return self

    def finish(self):
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


def test_request_of_another_process__seen_until_the_process_dies():
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
            REQUESTS_LOCK_FILE_NAME,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        seen_while_alive = requests_in_flight.requests_in_flight()
    finally:
        holder.kill()
        holder.wait(30)

    assert seen_while_alive
    assert not requests_in_flight.requests_in_flight()


@sqlite_only
def test_pause_after_piece__nobody_waiting__goes_on_at_once(no_other_jobs):
    started = time.monotonic()

    paused = pause_after_piece(0.2)

    assert not paused
    assert time.monotonic() - started < 0.1


@sqlite_only
def test_pause_after_piece__request_in_flight__leaves_the_lock_free(no_other_jobs):
    with _RequestInAnotherThread():
        paused = pause_after_piece(0.05)

    assert paused


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
