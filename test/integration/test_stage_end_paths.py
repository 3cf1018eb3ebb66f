"""
Every way a held background stage can end other than by its job running it: the
client's poll shows ERRORED (never STARTED for ever, never COMPLETED with data half
applied) and the server log names the job, what became of it and what to do. A job
of an earlier stage ending late leaves the current stage to its own job.

Paths already pinned elsewhere, not repeated here: the stage raises in its job, its
job is cleared, cancelled, or vanishes (``test_job_outcomes``), it runs in a dead
worker (``test_job_outcomes``), no worker picks it up (``test_no_worker``), a poll
between a waiting job's completing and its requeue (``test_writer_lock``), a
repeated request after the job settled the stage (``test_repeated_requests``).
"""

import datetime
import logging

import pytest
from django.db import OperationalError
from django.utils import timezone
from kolibri.core.tasks.main import job_storage
from kolibri.core.tasks.storage import Storage
from kolibri.core.tasks.utils import current_state_tracker
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.job.worker_identity import reservation_extra
from kolibri_sync_extras_plugin.request import hooks
from kolibri_sync_extras_plugin.request.poll import MISSING_JOB_GRACE_SECONDS
from kolibri_sync_extras_plugin.stage_status import job_id_for
from kolibri_sync_extras_plugin.writer_turn import writer_turn

from ..helpers.constants import ALL_DATABASES
from ..helpers.job_rows import delete_job_rows
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.options import sync_options
from ..helpers.worker_processes import ended_process_identity
from ..helpers.worker_processes import mark_running_in

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

TIMEOUT = 30


def _ago(seconds):
    return timezone.now() - datetime.timedelta(seconds=seconds)


def _error_logged(caplog, *words):
    """Whether one error record of the server's log says all of ``words``."""
    return _logged(caplog, lambda level: level >= logging.ERROR, words)


def _warning_logged(caplog, *words):
    """Whether one warning record of the server's log says all of ``words``."""
    return _logged(caplog, lambda level: level == logging.WARNING, words)


def _logged(caplog, at_level, words):
    return any(
        at_level(record.levelno) and all(word in record.getMessage() for word in words)
        for record in caplog.records
    )


@pytest.fixture
def pull_at_queuing(pull_at_serializing, async_client):
    """The pull, serialized by its job, whose queuing job is queued."""
    run_stage_jobs()
    async_client.proceed_to(pull_at_serializing["id"], transfer_stages.QUEUING)
    return pull_at_serializing


# -- a job of an earlier stage ends late --------------------------------------


def _clear(job_id):
    job_storage.clear(job_id=job_id, force=True)


def _cancel(job_id):
    # a finished job is only marked CANCELING; Kolibri's job checker then cancels it
    job_storage.cancel(job_id)
    job_storage.mark_job_as_canceled(job_id)


def _fail(job_id):
    job_storage.mark_job_as_failed(job_id, RuntimeError("failed late"), "")


@pytest.mark.parametrize(
    "end_late",
    [_clear, _cancel, _fail, delete_job_rows],
    ids=["cleared", "cancelled", "failed", "vanished"],
)
def test_earlier_stage_job_ends_late__current_stage_still_runs_and_completes(
    pull_at_queuing, async_client, job_storage_commits, end_late
):
    transfer_id = pull_at_queuing["id"]
    [queuing_job] = queued_stage_jobs()

    with job_storage_commits():
        end_late(job_id_for(transfer_id, transfer_stages.SERIALIZING))

    waiting = async_client.get(transfer_id)
    assert waiting["transfer_stage"] == transfer_stages.QUEUING
    assert waiting["transfer_stage_status"] == transfer_statuses.STARTED
    [ran] = run_stage_jobs()
    assert ran.job_id == queuing_job.job_id
    polled = async_client.get(transfer_id)
    assert polled["transfer_stage"] == transfer_stages.QUEUING
    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED


# -- the next stage's job never reaches job storage ---------------------------


def test_next_stage_enqueue_fails__stage_errored_at_once_and_log_names_the_job(
    pull_at_serializing, async_client, monkeypatch, caplog
):
    transfer_id = pull_at_serializing["id"]
    run_stage_jobs()

    def unreachable_job_storage(job_request):
        raise OperationalError("unable to open database file")

    monkeypatch.setattr(hooks, "enqueue_stage_job", unreachable_job_storage)
    with caplog.at_level(logging.ERROR):
        async_client.proceed_to(transfer_id, transfer_stages.QUEUING)

    polled = async_client.get(transfer_id)
    assert polled["transfer_stage"] == transfer_stages.QUEUING
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    assert _error_logged(
        caplog,
        "Could not enqueue job",
        job_id_for(transfer_id, transfer_stages.QUEUING),
    )


def _reserved_never_queued(pull_at_serializing, async_client, monkeypatch):
    """The queuing stage's job left PENDING by the request that reserved it."""
    transfer_id = pull_at_serializing["id"]
    run_stage_jobs()
    monkeypatch.setattr(hooks, "enqueue_stage_job", lambda job_request: False)
    async_client.proceed_to(transfer_id, transfer_stages.QUEUING)
    monkeypatch.undo()
    queuing_job_id = job_id_for(transfer_id, transfer_stages.QUEUING)
    assert job_storage.get_orm_job(queuing_job_id).state == "PENDING"
    return transfer_id, queuing_job_id


def test_next_stage_job_reserved_never_queued__client_poll_queues_it(
    pull_at_serializing, async_client, monkeypatch, caplog
):
    # the server process was killed between answering the request and queueing
    # its job (uwsgi's harakiri): the reservation is left PENDING
    transfer_id, queuing_job_id = _reserved_never_queued(
        pull_at_serializing, async_client, monkeypatch
    )
    update_job_row(
        queuing_job_id, worker_extra=reservation_extra(ended_process_identity())
    )

    with caplog.at_level(logging.WARNING):
        async_client.get(transfer_id)

    assert job_storage.get_orm_job(queuing_job_id).state == "QUEUED"
    assert _warning_logged(caplog, queuing_job_id, "without queueing it")
    [ran] = run_stage_jobs()
    assert ran.job_id == queuing_job_id
    assert async_client.get(transfer_id)["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )


def test_next_stage_job_reserved__poll_before_its_request_finished__queued_without_a_warning(
    pull_at_serializing, async_client, monkeypatch, caplog
):
    # a busy server: the client read the answer and polled before the thread
    # that sent it had finished the request and queued the job; the reserving
    # process (this one) still runs
    transfer_id, queuing_job_id = _reserved_never_queued(
        pull_at_serializing, async_client, monkeypatch
    )

    with caplog.at_level(logging.INFO):
        async_client.get(transfer_id)

    assert job_storage.get_orm_job(queuing_job_id).state == "QUEUED"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        queuing_job_id in r.getMessage() and "before the request" in r.getMessage()
        for r in caplog.records
    )
    [ran] = run_stage_jobs()
    assert ran.job_id == queuing_job_id


def test_next_stage_job_gone__poll_after_grace__errored_naming_the_job(
    pull_at_serializing, async_client, monkeypatch, caplog
):
    # something removed the job before it was queued
    transfer_id = pull_at_serializing["id"]
    run_stage_jobs()
    monkeypatch.setattr(hooks, "enqueue_stage_job", lambda job_request: False)
    async_client.proceed_to(transfer_id, transfer_stages.QUEUING)
    delete_job_rows(job_id_for(transfer_id, transfer_stages.QUEUING))
    assert async_client.get(transfer_id)["transfer_stage_status"] == (
        transfer_statuses.STARTED
    )
    TransferSession.objects.filter(id=transfer_id).update(
        last_activity_timestamp=_ago(MISSING_JOB_GRACE_SECONDS + 1)
    )

    with caplog.at_level(logging.ERROR):
        polled = async_client.get(transfer_id)

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    assert _error_logged(
        caplog,
        job_id_for(transfer_id, transfer_stages.QUEUING),
        "gone from job storage",
    )


# -- a job Kolibri re-queues, and stops re-queueing ---------------------------


@pytest.fixture
def another_stage_writing():
    with writer_turn() as turn:
        assert turn
        yield


@pytest.fixture
def requeue_fails(monkeypatch):
    """Kolibri's requeue of a finished job fails, as on a locked job storage."""

    def locked(storage, job_id, *args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(Storage, "reschedule_finished_job_if_needed", locked)


@pytest.fixture
def waiting_job_never_requeued(
    pull_at_serializing, another_stage_writing, requeue_fails
):
    """
    The pull's serializing job, which gave its worker back to wait for its
    writer's turn and which Kolibri, failing to requeue it, left COMPLETED.
    """
    [job] = queued_stage_jobs()
    try:
        with pytest.raises(OperationalError):
            job.execute()
    finally:
        # Kolibri's execute raised before it let go of the job it was running
        current_state_tracker.job = None
    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert job_storage.get_job(job.job_id).result["waiting"] is True
    return pull_at_serializing, job


def test_waiting_job_never_requeued__past_the_bound__stage_errored_naming_the_job(
    waiting_job_never_requeued, async_client, caplog
):
    transfer, job = waiting_job_never_requeued
    update_job_row(job.job_id, scheduled_time=_ago(TIMEOUT + 1))

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT), caplog.at_level(logging.ERROR):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    assert _error_logged(caplog, job.job_id, "never queued it again")


def test_waiting_job_not_requeued_yet__within_the_bound__stage_still_started(
    waiting_job_never_requeued, async_client
):
    transfer, job = waiting_job_never_requeued
    update_job_row(job.job_id, scheduled_time=_ago(TIMEOUT - 5))

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED


def test_failed_job_that_kolibri_retries__stage_errored_at_first_failure_and_stays_so(
    background_everything, async_client, server_sync_session, job_storage_commits
):
    transfer = async_client.create(server_sync_session, push=False)
    # a client_fsic that is not JSON makes queuing raise
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic="not json"
    )
    run_stage_jobs()
    async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    [job] = queued_stage_jobs()
    update_job_row(job.job_id, retry_interval=1)

    with job_storage_commits():
        job.execute()

    assert job_storage.get_orm_job(job.job_id).state == "QUEUED"
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.ERRORED
    )
    [retried] = run_stage_jobs()
    assert retried.result["ran"] is False
    polled = async_client.get(transfer["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


def test_running_job_requeued_when_workers_restart__runs_the_stage_and_completes(
    pull_at_serializing, async_client
):
    [job] = queued_stage_jobs()
    mark_running_in(job.job_id, ended_process_identity())

    # what Kolibri's workers do as they start with a job left RUNNING
    job_storage.mark_job_as_queued(job.job_id)
    run_stage_jobs()

    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED


# -- a job Kolibri's workers took, and that will never run --------------------


def test_job_selected_but_never_started__past_the_bound__errored_and_cancelled(
    pull_at_serializing, async_client, caplog
):
    [job] = queued_stage_jobs()
    # the worker process stopped between selecting the job and starting it
    update_job_row(job.job_id, state="SELECTED", scheduled_time=_ago(TIMEOUT + 1))

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT), caplog.at_level(logging.ERROR):
        polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    assert job_storage.get_orm_job(job.job_id).state == "CANCELED"
    assert _error_logged(caplog, job.job_id, "selected to run but never started")


def test_job_selected__within_the_bound__stage_still_started(
    pull_at_serializing, async_client
):
    [job] = queued_stage_jobs()
    update_job_row(job.job_id, state="SELECTED", scheduled_time=_ago(TIMEOUT - 5))

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT):
        polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED
    assert job_storage.get_orm_job(job.job_id).state == "SELECTED"


def test_job_canceling_in_a_dead_worker__stage_errored_naming_the_worker(
    pull_at_serializing, async_client, caplog
):
    # Kolibri's shutdown marked the running job CANCELING, then the process ended
    [job] = queued_stage_jobs()
    dead_worker = ended_process_identity()
    mark_running_in(job.job_id, dead_worker)
    update_job_row(job.job_id, state="CANCELING")

    with caplog.at_level(logging.ERROR):
        polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    assert job_storage.get_job(job.job_id).exception == "WorkerGone"
    assert _error_logged(
        caplog, job.job_id, "worker process {}".format(dead_worker["pid"])
    )
