"""
One stage job writing at a time on SQLite: a job that finds another writing gives
its worker back and is queued again, and runs once the turn is free.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from kolibri.core.tasks.main import job_storage
from kolibri.core.tasks.storage import Storage
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.admin.status import STUCK
from kolibri_sync_extras_plugin.admin.status import report_background_stages
from kolibri_sync_extras_plugin.compat import aware_utc
from kolibri_sync_extras_plugin.job.writer_turn import writer_turn
from kolibri_sync_extras_plugin.request.poll import check_background_stage

from ..helpers.constants import ALL_DATABASES
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _stage_status(transfer):
    return TransferSession.objects.get(id=transfer["id"]).transfer_stage_status


@pytest.fixture
def another_stage_writing():
    with writer_turn() as turn:
        assert turn
        yield


def test_writer_turn__taken__second_taker_is_refused(another_stage_writing):
    with writer_turn() as turn:
        assert not turn


def test_writer_turn__released__can_be_taken_again():
    with writer_turn():
        pass

    with writer_turn() as turn:
        assert turn


def test_stage_job__turn_taken__job_queued_again_for_later(
    pull_at_serializing, another_stage_writing
):
    [job] = queued_stage_jobs()

    job.execute()

    orm_job = job_storage.get_orm_job(job.job_id)
    assert orm_job.state == "QUEUED"
    assert aware_utc(orm_job.scheduled_time) > timezone.now()


def test_stage_job__polled_between_giving_its_turn_back_and_requeue__stage_still_started(
    pull_at_serializing, another_stage_writing, monkeypatch
):
    # Kolibri marks a job that asked to be retried completed, then queues it
    # again: a client's poll may come in between
    [job] = queued_stage_jobs()
    storage = Storage
    requeue = storage.reschedule_finished_job_if_needed
    polled = []

    def poll_then_requeue(self, job_id, *args, **kwargs):
        polled.append(check_background_stage(pull_at_serializing["id"]))
        return requeue(self, job_id, *args, **kwargs)

    monkeypatch.setattr(storage, "reschedule_finished_job_if_needed", poll_then_requeue)

    job.execute()

    assert polled == [None]
    assert _stage_status(pull_at_serializing) == transfer_statuses.STARTED


def test_stage_job__turn_taken__stage_still_started(
    pull_at_serializing, another_stage_writing
):
    [job] = queued_stage_jobs()

    job.execute()

    assert _stage_status(pull_at_serializing) == transfer_statuses.STARTED


def test_stage_job__turn_free_again__runs_and_completes_the_stage(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    with writer_turn():
        job.execute()
    # run it now rather than wait for its retry
    update_job_row(job.job_id, scheduled_time=timezone.now())

    job_storage.get_job(job.job_id).execute()

    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert _stage_status(pull_at_serializing) == transfer_statuses.COMPLETED


def test_stage_job__waiting_past_stuck_after__status_reports_it_stuck(
    pull_at_serializing, another_stage_writing
):
    [job] = queued_stage_jobs()
    enqueued = timezone.now() - timedelta(seconds=120)
    update_job_row(job.job_id, scheduled_time=enqueued)
    job.execute()

    [report] = report_background_stages(stuck_after=60)

    assert report.problem == STUCK
    assert report.enqueued_at == enqueued
