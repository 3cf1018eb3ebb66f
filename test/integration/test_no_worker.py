"""
A stage job that no worker ever picks up does not keep its client polling for
ever: once it has waited ``STAGE_JOB_START_TIMEOUT`` while no stage job runs on
the server, the next poll ends the stage as errored, cancels the job and logs
what to start. A job queued behind a running one, or one that a worker already
took and gave back to wait for its writer's turn, waits on.
"""

import datetime
import logging

import pytest
from django.utils import timezone
from kolibri.core.tasks.main import job_storage
from morango.constants import transfer_statuses

from kolibri_sync_extras_plugin.admin.status import STUCK
from kolibri_sync_extras_plugin.admin.status import report_background_stages
from kolibri_sync_extras_plugin.config import get_stage_job_start_timeout
from kolibri_sync_extras_plugin.errors import InvalidSyncOption
from kolibri_sync_extras_plugin.stage_status import FIRST_ENQUEUED_KEY

from ..helpers.constants import ALL_DATABASES
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs
from ..helpers.options import sync_options
from ..helpers.worker_processes import live_identity
from ..helpers.worker_processes import mark_running_in

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

TIMEOUT = 30


def _enqueued_ago(job_id, seconds):
    update_job_row(
        job_id, scheduled_time=timezone.now() - datetime.timedelta(seconds=seconds)
    )


@pytest.fixture
def waiting_job(pull_at_serializing):
    """The pull's serializing job, queued and never taken by a worker."""
    [job] = queued_stage_jobs()
    return pull_at_serializing, job


def test_no_worker__past_the_bound__stage_errored_job_cancelled_and_logged(
    waiting_job, async_client, caplog
):
    transfer, job = waiting_job
    _enqueued_ago(job.job_id, TIMEOUT + 1)

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT), caplog.at_level(logging.ERROR):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
    assert job_storage.get_orm_job(job.job_id).state == "CANCELED"
    assert any(
        "no background worker picked it up" in record.getMessage()
        and "kolibri services" in record.getMessage()
        for record in caplog.records
    )


def test_no_worker__within_the_bound__stage_still_started(waiting_job, async_client):
    transfer, job = waiting_job
    _enqueued_ago(job.job_id, TIMEOUT - 5)

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED
    assert job_storage.get_orm_job(job.job_id).state == "QUEUED"


def test_queued_behind_a_running_stage_job__past_the_bound__still_started(
    waiting_job, async_client, another_running_stage_job
):
    transfer, job = waiting_job
    _enqueued_ago(job.job_id, TIMEOUT + 1)

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED


def test_job_waiting_for_its_writers_turn__past_the_bound__still_started(
    waiting_job, async_client
):
    transfer, job = waiting_job
    job.update_metadata(**{FIRST_ENQUEUED_KEY: timezone.now().isoformat()})
    _enqueued_ago(job.job_id, TIMEOUT + 1)

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED


def test_status_command__no_worker__the_stage_is_stuck_saying_what_to_start(
    waiting_job,
):
    transfer, job = waiting_job
    _enqueued_ago(job.job_id, TIMEOUT + 1)

    with sync_options(STAGE_JOB_START_TIMEOUT=TIMEOUT):
        [report] = report_background_stages()

    assert report.problem == STUCK
    assert "no background worker" in report.detail
    assert "kolibri services" in report.detail


@pytest.mark.parametrize("bad", [0, 9, 86401, "soon"])
def test_start_timeout__out_of_range__error_names_option_and_range(bad):
    with pytest.raises(InvalidSyncOption) as error:
        get_stage_job_start_timeout({"Sync": {"STAGE_JOB_START_TIMEOUT": bad}})

    assert "STAGE_JOB_START_TIMEOUT" in str(error.value)
    assert "from 10 to 86400" in str(error.value)


@pytest.fixture
def another_running_stage_job(waiting_job):
    """Another sync's stage job, which a live worker is running."""
    import uuid

    from kolibri.core.tasks.registry import TaskRegistry
    from morango.constants import transfer_stages

    from kolibri_sync_extras_plugin.compat import insert_job
    from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
    from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE

    task = TaskRegistry[RUN_STAGE_TASK]
    job = task._ready_job(
        job_id=uuid.uuid4().hex,
        kwargs=dict(
            transfer_session_id=uuid.uuid4().hex, stage=transfer_stages.QUEUING
        ),
    )
    assert insert_job(job, priority=task.priority, queue=SYNC_EXTRAS_QUEUE)
    mark_running_in(job.job_id, live_identity())
    return job
