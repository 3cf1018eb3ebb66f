"""
However a stage's job ends, the polling client learns it: the stage settles as
COMPLETED or ERRORED and never stays in progress with nothing left to move it.
"""

import datetime

import pytest
from django.utils import timezone
from kolibri.core.tasks.main import job_storage
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import Buffer
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.request import hooks
from kolibri_sync_extras_plugin.request.poll import MISSING_JOB_GRACE_SECONDS

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.job_rows import delete_job_rows
from ..helpers.job_rows import job_storage_in_test_transaction
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.worker_processes import ended_process_identity
from ..helpers.worker_processes import live_identity
from ..helpers.worker_processes import mark_running_in

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def instant_worker(monkeypatch):
    """A worker that runs each stage job the moment it is enqueued."""
    enqueue = hooks.enqueue_stage_job

    def enqueue_and_run(job_request):
        enqueued = enqueue(job_request)
        job_storage.get_job(job_request["job_id"]).execute()
        return enqueued

    monkeypatch.setattr(hooks, "enqueue_stage_job", enqueue_and_run)


def test_job_finishes_before_the_request_returns__client_sees_completed(
    background_everything, instant_worker, async_client, server_sync_session
):
    transfer = async_client.create(server_sync_session, push=False)

    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )

    polled = async_client.get(transfer["id"])
    assert polled["transfer_stage"] == transfer_stages.SERIALIZING
    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert polled["client_fsic"] == EMPTY_FSIC


def test_stage_raises_in_the_job__stage_errored_and_job_failed(
    failed_queuing, async_client
):
    job = job_storage.get_job(failed_queuing["job_id"])

    assert job.state == "FAILED"
    assert job.exception
    polled = async_client.get(failed_queuing["id"])
    assert polled["transfer_stage"] == transfer_stages.QUEUING
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


def test_job_cleared_from_storage_before_running__stage_errored(
    pull_at_serializing, async_client, job_storage_commits
):
    [job] = queued_stage_jobs()

    with job_storage_commits():
        job_storage.clear(job_id=job.job_id, force=True)

    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


def test_job_cancelled_before_running__stage_errored(
    pull_at_serializing, async_client, job_storage_commits
):
    [job] = queued_stage_jobs()

    with job_storage_commits():
        job_storage.cancel(job.job_id)

    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


@pytest.mark.skipif(
    not job_storage_in_test_transaction(),
    reason="before Kolibri 0.19 job storage calls its hooks after it commits",
)
def test_job_cancelled__stage_settled_after_job_storage_commits(
    pull_at_serializing, job_storage_commits, monkeypatch
):
    from django.db import connections
    from django.db import router
    from kolibri.core.tasks.models import Job as ORMJob

    from kolibri_sync_extras_plugin import stage_status

    job_db = connections[router.db_for_write(ORMJob)]
    depth_in_test = len(job_db.savepoint_ids)
    depths = []
    settle = stage_status.settle_from_job

    def recording(job, job_state):
        depths.append(len(job_db.savepoint_ids))
        return settle(job, job_state)

    monkeypatch.setattr(stage_status, "settle_from_job", recording)
    [job] = queued_stage_jobs()

    with job_storage_commits():
        job_storage.cancel(job.job_id)
        # job storage has written the job, and not yet settled its stage
        assert depths == []

    assert depths == [depth_in_test]
    assert TransferSession.objects.get(
        id=pull_at_serializing["id"]
    ).transfer_stage_status == (transfer_statuses.ERRORED)


def test_finished_job_cleared_later__completed_stage_left_alone(
    pull_at_serializing, async_client
):
    [job] = run_stage_jobs()

    job_storage.clear(job_id=job.job_id)

    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED


def test_transfer_session_closed_before_job_runs__job_leaves_data_alone(
    pull_at_serializing, async_client
):
    async_client.proceed_to(pull_at_serializing["id"], transfer_stages.SERIALIZING)
    run_stage_jobs()
    async_client.proceed_to(pull_at_serializing["id"], transfer_stages.QUEUING)
    TransferSession.objects.filter(id=pull_at_serializing["id"]).update(active=False)

    [job] = run_stage_jobs()

    assert job.state == "COMPLETED"
    assert job.result["ran"] is False
    assert "closed" in job.result["reason"]
    assert not Buffer.objects.filter(
        transfer_session_id=pull_at_serializing["id"]
    ).exists()
    session = TransferSession.objects.get(id=pull_at_serializing["id"])
    assert session.transfer_stage_status == transfer_statuses.STARTED


def test_stage_already_settled__a_rerun_job_leaves_it_alone(
    pull_at_serializing, async_client
):
    [job] = run_stage_jobs()
    settled = TransferSession.objects.get(id=pull_at_serializing["id"])

    job_storage.enqueue_job(
        job_storage.get_job(job.job_id), queue=job_storage.get_orm_job(job.job_id).queue
    )
    [rerun] = run_stage_jobs()

    assert rerun.result["ran"] is False
    after = TransferSession.objects.get(id=pull_at_serializing["id"])
    assert after.server_fsic == settled.server_fsic
    assert after.transfer_stage_status == transfer_statuses.COMPLETED


def _backdate_stage(transfer_session_id, seconds):
    TransferSession.objects.filter(id=transfer_session_id).update(
        last_activity_timestamp=timezone.now() - datetime.timedelta(seconds=seconds)
    )


def _delete_job_row(job_id):
    # as if job storage lost the row outside Kolibri's API (no job hook runs)
    delete_job_rows(job_id)


def test_job_row_vanishes__client_poll_within_grace__stage_still_started(
    pull_at_serializing, async_client
):
    [job] = queued_stage_jobs()
    _delete_job_row(job.job_id)

    polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED


def test_job_row_vanishes__client_polls_after_grace__stage_errored(
    pull_at_serializing, async_client
):
    [job] = queued_stage_jobs()
    _delete_job_row(job.job_id)
    _backdate_stage(pull_at_serializing["id"], MISSING_JOB_GRACE_SECONDS + 1)

    polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


def test_job_running_in_a_dead_worker__client_polls__stage_errored_and_job_failed(
    pull_at_serializing, async_client
):
    [job] = queued_stage_jobs()
    dead_worker = ended_process_identity()
    mark_running_in(job.job_id, dead_worker)

    polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    failed = job_storage.get_job(job.job_id)
    assert failed.state == "FAILED"
    assert failed.exception == "WorkerGone"


def test_job_running_in_a_live_worker__client_polls__stage_still_started(
    pull_at_serializing, async_client
):
    [job] = queued_stage_jobs()
    mark_running_in(job.job_id, live_identity())

    polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED
    assert job_storage.get_orm_job(job.job_id).state == "RUNNING"
