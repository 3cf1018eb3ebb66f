"""
Finished stage jobs are cleared from job storage once their transfer session has
closed and their retention has passed, by a repeating Kolibri job that is
scheduled with the stage jobs and never doubled.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from kolibri.core.tasks.exceptions import JobNotFound
from kolibri.core.tasks.main import job_storage
from morango.constants import transfer_stages
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.admin.retention import RETENTION_JOB_ID
from kolibri_sync_extras_plugin.admin.retention import expired_stage_jobs
from kolibri_sync_extras_plugin.compat import aware_utc
from kolibri_sync_extras_plugin.tasks import clear_finished_stage_jobs

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.options import sync_options

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _close(transfer):
    TransferSession.objects.filter(id=transfer["id"]).update(active=False)


def _exists(job_id):
    try:
        job_storage.get_orm_job(job_id)
    except JobNotFound:
        return False
    return True


@pytest.fixture
def completed_job(pull_at_serializing):
    """The completed serializing job of a pull."""
    [job] = run_stage_jobs()
    return pull_at_serializing, job


def test_retention__completed_job_of_closed_session_past_retention__cleared(
    completed_job,
):
    transfer, job = completed_job
    _close(transfer)

    with sync_options(COMPLETED_STAGE_JOB_RETENTION=0):
        result = clear_finished_stage_jobs()

    assert result == {"cleared": 1}
    assert not _exists(job.job_id)


def test_retention__session_still_open__job_kept(completed_job):
    transfer, job = completed_job

    with sync_options(COMPLETED_STAGE_JOB_RETENTION=0):
        clear_finished_stage_jobs()

    assert _exists(job.job_id)


def test_retention__within_completed_retention__job_kept(completed_job):
    transfer, job = completed_job
    _close(transfer)

    with sync_options(COMPLETED_STAGE_JOB_RETENTION=3600):
        clear_finished_stage_jobs()

    assert _exists(job.job_id)


def test_retention__completed_retention_passed__job_expired(completed_job):
    transfer, job = completed_job
    _close(transfer)

    with sync_options(COMPLETED_STAGE_JOB_RETENTION=3600):
        expired = expired_stage_jobs(now=timezone.now() + timedelta(seconds=3601))

    assert [j.job_id for j in expired] == [job.job_id]


def test_retention__failed_job__kept_for_the_failed_retention(failed_queuing):
    _close(failed_queuing)

    with sync_options(COMPLETED_STAGE_JOB_RETENTION=0, FAILED_STAGE_JOB_RETENTION=60):
        kept = expired_stage_jobs(now=timezone.now() + timedelta(seconds=30))
        expired = expired_stage_jobs(now=timezone.now() + timedelta(seconds=61))

    assert failed_queuing["job_id"] not in [j.job_id for j in kept]
    assert failed_queuing["job_id"] in [j.job_id for j in expired]


def test_retention_job__stage_job_enqueued__scheduled_to_repeat_at_the_interval(
    pull_at_serializing,
):
    orm_job = job_storage.get_orm_job(RETENTION_JOB_ID)

    assert orm_job.repeat is None
    assert orm_job.interval == 600
    assert aware_utc(orm_job.scheduled_time) > timezone.now()


def test_retention_job__id__fits_kolibris_job_table():
    # PostgreSQL refuses a longer id; SQLite would store it
    try:
        from kolibri.core.tasks.models import Job
    except ImportError:
        pytest.skip("this Kolibri line keeps jobs in a table without an id length")

    assert len(RETENTION_JOB_ID) <= Job._meta.get_field("id").max_length


def test_retention_job__scheduled_under_the_old_id__replaced(pull_at_serializing):
    from kolibri.core.tasks.job import Job

    from kolibri_sync_extras_plugin.admin.retention import schedule_retention

    old_id = "kolibri_sync_extras_stage_job_retention"
    job_storage.schedule(
        timezone.now() + timedelta(hours=1),
        Job(clear_finished_stage_jobs, job_id=old_id),
        interval=600,
        repeat=None,
    )

    schedule_retention(clear_finished_stage_jobs)

    with pytest.raises(JobNotFound):
        job_storage.get_orm_job(old_id)
    assert job_storage.get_orm_job(RETENTION_JOB_ID).interval == 600


#: Where 1.0.0 defined the clearing task; job storage keeps the path of each job.
CLEARING_TASK_OF_1_0_0 = (
    "kolibri_sync_extras_plugin.retention.clear_finished_stage_jobs"
)
#: Where 1.0.0 registered the stage task; the path is kept on purpose.
STAGE_TASK_OF_1_0_0 = "kolibri_sync_extras_plugin.tasks.run_background_stage"


def test_retention_job__stored_by_1_0_0_under_its_old_path__scheduled_again_and_runs(
    completed_job,
):
    from kolibri.core.tasks.job import Job

    from kolibri_sync_extras_plugin.admin.retention import schedule_retention

    transfer, job = completed_job
    _close(transfer)
    job_storage.clear(job_id=RETENTION_JOB_ID, force=True)
    job_storage.schedule(
        timezone.now() + timedelta(hours=1),
        Job(CLEARING_TASK_OF_1_0_0, job_id=RETENTION_JOB_ID),
        interval=600,
        repeat=None,
    )

    schedule_retention(clear_finished_stage_jobs)

    retention_job = job_storage.get_job(RETENTION_JOB_ID)
    assert retention_job.func == clear_finished_stage_jobs.func_string
    with sync_options(COMPLETED_STAGE_JOB_RETENTION=0):
        retention_job.execute()
    assert not _exists(job.job_id)


def test_stage_job__queued_by_1_0_0__runs_under_the_path_it_was_stored_with(
    pull_at_serializing,
):
    # a stage job waiting in job storage across the upgrade keeps its old path
    job = queued_stage_jobs()[0]
    assert job.func == STAGE_TASK_OF_1_0_0

    run_stage_jobs()

    assert (
        TransferSession.objects.get(id=pull_at_serializing["id"]).transfer_stage_status
        == "completed"
    )


def test_retention_job__another_stage_job_enqueued__not_rescheduled(
    pull_at_serializing, async_client
):
    first = job_storage.get_orm_job(RETENTION_JOB_ID).scheduled_time
    run_stage_jobs()

    async_client.proceed_to(pull_at_serializing["id"], transfer_stages.QUEUING)

    assert queued_stage_jobs()[0].kwargs["stage"] == transfer_stages.QUEUING
    assert job_storage.get_orm_job(RETENTION_JOB_ID).scheduled_time == first


def test_retention_job__run__clears_and_is_queued_again(completed_job):
    transfer, job = completed_job
    _close(transfer)
    retention_job = job_storage.get_job(RETENTION_JOB_ID)

    with sync_options(COMPLETED_STAGE_JOB_RETENTION=0):
        retention_job.execute()

    assert not _exists(job.job_id)
    orm_job = job_storage.get_orm_job(RETENTION_JOB_ID)
    assert orm_job.state == "QUEUED"
    assert aware_utc(orm_job.scheduled_time) > timezone.now()
