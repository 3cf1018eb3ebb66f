"""
A client, or a proxy's retry, that repeats its request for a stage: whichever
comes first, the repeated request or the stage's job, the stage ends with the
job's outcome and its job runs once.
"""

import pytest
from kolibri.core.tasks.main import job_storage
from morango.api.viewsets import TransferSessionViewSet
from morango.constants import transfer_stages
from morango.constants import transfer_statuses

from kolibri_sync_extras_plugin.request.enqueue import enqueue_stage_job

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.jobs import stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def job_finishes_inside_the_repeated_patch(monkeypatch):
    """
    The stage's job runs to its end after the repeated PATCH has read the transfer
    session row and before it saves it, as a worker can at any moment.
    """
    save = TransferSessionViewSet.perform_update

    def job_runs_then_save(view, serializer):
        run_stage_jobs()
        return save(view, serializer)

    monkeypatch.setattr(TransferSessionViewSet, "perform_update", job_runs_then_save)


def _repeat_serializing(client, transfer_session_id):
    return client.proceed_to(
        transfer_session_id, transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )


def test_repeated_patch__job_finishes_while_it_is_served__the_jobs_outcome_kept(
    pull_at_serializing, async_client, job_finishes_inside_the_repeated_patch
):
    repeated = _repeat_serializing(async_client, pull_at_serializing["id"])
    # the PATCH saves the row it had read, but not over what the job wrote since
    # (see session_saves): its answer is the job's COMPLETED, with the counters
    assert repeated["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert repeated["server_fsic"] not in ("", "{}")

    polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED


def test_repeated_patch__job_finished_before_it__completed_and_no_second_job(
    pull_at_serializing, async_client
):
    [job] = run_stage_jobs()

    repeated = _repeat_serializing(async_client, pull_at_serializing["id"])

    assert repeated["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert queued_stage_jobs(timeout=1) == []
    assert job_storage.get_job(job.job_id).state == "COMPLETED"


def _request_of(job):
    """The enqueue arguments that would make ``job`` again."""
    return dict(
        job_id=job.job_id,
        facility_id=job.facility_id,
        extra_metadata=job.extra_metadata,
        kwargs=job.kwargs,
    )


def test_enqueue_stage_job__job_of_that_stage_completed__not_enqueued_again(
    pull_at_serializing,
):
    [job] = run_stage_jobs()
    enqueued = enqueue_stage_job(_request_of(job))

    assert not enqueued
    assert [j.state for j in stage_jobs()] == ["COMPLETED"]


def test_enqueue_stage_job__job_of_that_stage_queued__not_enqueued_again(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    enqueued = enqueue_stage_job(_request_of(job))

    assert not enqueued
    assert [j.state for j in stage_jobs()] == ["QUEUED"]
