"""
A client's poll of a stage that a job of this process runs is held a moment, and
answered the moment the stage is settled: morango's client polls every second, and
each poll takes the processor from the job it waits for.
"""

import threading
import time
import uuid

import pytest
from django.db import connections
from morango.constants import transfer_stages
from morango.constants import transfer_statuses

from kolibri_sync_extras_plugin import poll_hold
from kolibri_sync_extras_plugin.stage_status import complete_stage

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import run_stage_jobs

# committed for real: the poll is answered in another thread, and a settling
# ends the hold once it commits
pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@pytest.fixture
def hold_of(monkeypatch):
    def hold(seconds):
        monkeypatch.setattr(poll_hold, "POLL_HOLD_SECONDS", seconds)

    return hold


@pytest.fixture
def stage_jobs_run_here():
    poll_hold.stage_jobs_run_here()


@pytest.fixture
def other_clients_waiting():
    """Other clients' stages wait on this process's jobs too: a class set."""
    others = [uuid.uuid4().hex for _ in range(poll_hold.POLL_HOLD_MIN_SESSIONS - 1)]
    for transfer_session_id in others:
        poll_hold.stage_held_here(transfer_session_id)
    yield
    for transfer_session_id in others:
        poll_hold.stage_settled(transfer_session_id)


class PollInAnotherThread:
    """A client's poll, answered in a thread of its own (as cheroot answers it)."""

    def __init__(self, client, transfer_session_id):
        self.answer = None
        self.seconds = None
        self.answered_at = None
        self._thread = threading.Thread(
            target=self._poll, args=(client, transfer_session_id)
        )

    def _poll(self, client, transfer_session_id):
        started = time.monotonic()
        try:
            self.answer = client.get(transfer_session_id)
            self.answered_at = time.monotonic()
            self.seconds = self.answered_at - started
        finally:
            connections.close_all()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join(30)


def _timed_poll(client, transfer_session_id):
    started = time.monotonic()
    answer = client.get(transfer_session_id)
    return answer, time.monotonic() - started


def _poll_answered_at_once(client, transfer_session_id):
    """A poll, asserted to come back long before a 20 s hold would have ended."""
    answer, seconds = _timed_poll(client, transfer_session_id)
    assert seconds < 10.0
    return answer


def test_stage_still_running__poll_held_then_answered_in_progress(
    pull_at_serializing,
    async_client,
    hold_of,
    stage_jobs_run_here,
    other_clients_waiting,
):
    hold_of(0.4)

    answer, seconds = _timed_poll(async_client, pull_at_serializing["id"])

    assert seconds >= 0.4
    assert answer["transfer_stage"] == transfer_stages.SERIALIZING
    assert answer["transfer_stage_status"] == transfer_statuses.STARTED


def _its_job_runs(transfer_session_id):
    [job] = run_stage_jobs()
    assert job.state == "COMPLETED"


def _a_poll_check_settles_it(transfer_session_id):
    # a poll's check settles a stage from its job's state: every settling ends
    # the holds, not only a job's
    assert complete_stage(transfer_session_id, transfer_stages.SERIALIZING)


@pytest.mark.parametrize("settle", [_its_job_runs, _a_poll_check_settles_it])
def test_stage_settled_during_the_hold__poll_answered_at_once_with_it(
    settle,
    pull_at_serializing,
    async_client,
    hold_of,
    stage_jobs_run_here,
    other_clients_waiting,
):
    hold_of(20.0)

    with PollInAnotherThread(async_client, pull_at_serializing["id"]) as poll:
        time.sleep(0.5)  # the poll is held by now
        assert poll.answer is None
        settle(pull_at_serializing["id"])
        settled_at = time.monotonic()

    assert poll.answer["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert poll.answered_at - settled_at < 5.0


def test_process_runs_no_stage_jobs__poll_answered_at_once(
    pull_at_serializing, async_client, hold_of, other_clients_waiting
):
    # uwsgi's workers: the job runs in kolibri services, which would not end the hold
    hold_of(20.0)

    answer = _poll_answered_at_once(async_client, pull_at_serializing["id"])

    assert answer["transfer_stage_status"] == transfer_statuses.STARTED


def test_stage_no_longer_held__poll_answered_at_once(
    pull_at_serializing,
    async_client,
    hold_of,
    stage_jobs_run_here,
    other_clients_waiting,
):
    run_stage_jobs()
    hold_of(20.0)

    answer = _poll_answered_at_once(async_client, pull_at_serializing["id"])

    assert answer["transfer_stage_status"] == transfer_statuses.COMPLETED


def _a_client_alone(request):
    """One device syncing: its polls cost the job little, and no request is held."""


def _others_handed_over_long_ago(request):
    """The other sessions' clients gave up long ago: never settled, they no longer count."""
    request.getfixturevalue("other_clients_waiting")
    time.sleep(0.05)
    request.getfixturevalue("monkeypatch").setattr(
        poll_hold, "HELD_SESSION_MEMORY_SECONDS", 0.01
    )


@pytest.mark.parametrize(
    "no_class_set", [_a_client_alone, _others_handed_over_long_ago]
)
def test_no_class_set_waiting__poll_answered_at_once(
    no_class_set,
    request,
    pull_at_serializing,
    async_client,
    hold_of,
    stage_jobs_run_here,
):
    no_class_set(request)
    hold_of(20.0)

    answer = _poll_answered_at_once(async_client, pull_at_serializing["id"])

    assert answer["transfer_stage_status"] == transfer_statuses.STARTED
