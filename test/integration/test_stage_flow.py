"""
The server side of a sync over real HTTP: which stages leave the request, what the
client sees while they run, and what the background job leaves behind.
"""

import json

import pytest
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import Buffer
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.compat import workers_are_handed_a_log_queue
from kolibri_sync_extras_plugin.stage_status import job_id_for
from kolibri_sync_extras_plugin.stage_status import transfer_session_of_job

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.jobs import no_stage_jobs_after
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.jobs import stage_jobs
from ..helpers.options import kolibri_options
from ..helpers.options import sync_options

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _pull_to_serializing(client, sync_session):
    transfer = client.create(sync_session, push=False)
    return transfer, client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )


def test_pull_serializing__background_on__request_returns_started_and_queues_one_job(
    background_everything, async_client, server_sync_session
):
    transfer, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage"] == transfer_stages.SERIALIZING
    assert response["transfer_stage_status"] == transfer_statuses.STARTED
    [job] = queued_stage_jobs()
    assert job.job_id == job_id_for(transfer["id"], transfer_stages.SERIALIZING)
    assert job.state == "QUEUED"
    assert job.kwargs["request_data"] == {"client_fsic": EMPTY_FSIC}
    assert job.extra_metadata["stage"] == transfer_stages.SERIALIZING
    assert job.extra_metadata["direction"] == "pull"
    assert job.extra_metadata["facility_name"] == "Riverside School"
    assert transfer_session_of_job(job) == transfer["id"]


def test_pull_serializing__job_queued__names_no_session_in_job_storage(
    background_everything, async_client, server_sync_session
):
    """Kolibri's tasks API shows kwargs and metadata; session ids open morango's API."""
    transfer, _ = _pull_to_serializing(async_client, server_sync_session)

    [job] = queued_stage_jobs()
    stored = json.dumps([job.kwargs, job.extra_metadata, job.args])
    assert transfer["id"] not in stored
    assert server_sync_session.id not in stored
    assert server_sync_session.client_instance_id.hex not in stored


def test_pull_serializing__job_runs__serializes_with_the_clients_fsic(
    background_everything, async_client, server_sync_session
):
    transfer, _ = _pull_to_serializing(async_client, server_sync_session)

    [job] = run_stage_jobs()

    assert job.state == "COMPLETED"
    polled = async_client.get(transfer["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert polled["client_fsic"] == EMPTY_FSIC
    # the server's counters for the facility's serialized records
    assert server_sync_session.server_certificate.get_root().id in polled["server_fsic"]


def test_pull_queuing__job_runs__buffers_every_record_for_the_client(
    background_everything, async_client, server_sync_session
):
    transfer, _ = _pull_to_serializing(async_client, server_sync_session)
    run_stage_jobs()

    async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    [job] = run_stage_jobs()

    polled = async_client.get(transfer["id"])
    assert job.job_id == job_id_for(transfer["id"], transfer_stages.QUEUING)
    assert polled["transfer_stage"] == transfer_stages.QUEUING
    assert polled["transfer_stage_status"] == transfer_statuses.COMPLETED
    # 12 learners, 12 memberships, a classroom, the facility, its dataset
    assert polled["records_total"] >= 27
    assert (
        Buffer.objects.filter(transfer_session_id=transfer["id"]).count()
        == (polled["records_total"])
    )


def test_pull_serializing__background_off__runs_inside_the_request(
    async_client, server_sync_session
):
    _, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert no_stage_jobs_after()


def test_pull_serializing__stage_not_configured__runs_inside_the_request(
    async_client, server_sync_session
):
    with sync_options(
        BACKGROUND_INITIALIZATION=True, BACKGROUND_INITIALIZATION_STAGES=["queuing"]
    ):
        _, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert no_stage_jobs_after()


def test_pull__client_cannot_poll__every_initialization_stage_runs_inline(
    background_everything, blocking_client, server_sync_session
):
    transfer = blocking_client.create(
        server_sync_session, push=False, client_fsic=EMPTY_FSIC
    )

    assert transfer["transfer_stage"] == transfer_stages.QUEUING
    assert transfer["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert transfer["records_total"] >= 27
    assert no_stage_jobs_after()


@pytest.mark.skipif(
    not workers_are_handed_a_log_queue(),
    reason="Kolibri before 0.18 gives its workers no log queue",
)
def test_worker_multiprocessing_on__no_job_could_start__every_stage_runs_inline(
    background_everything, async_client, server_sync_session
):
    """Kolibri's workers would mark such a job SELECTED and never start it."""
    with kolibri_options("Tasks", USE_WORKER_MULTIPROCESSING=True):
        transfer, serialized = _pull_to_serializing(async_client, server_sync_session)
        queued = async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)

    assert serialized["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert queued["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert queued["records_total"] >= 27
    assert no_stage_jobs_after()


def test_pull_serializing__client_repeats_the_request__still_one_job(
    background_everything, async_client, server_sync_session
):
    transfer, _ = _pull_to_serializing(async_client, server_sync_session)

    again = async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )

    assert again["transfer_stage_status"] == transfer_statuses.STARTED
    assert len(stage_jobs()) == 1


def test_pull_serializing__client_polls__a_get_never_runs_the_stage(
    background_everything, async_client, server_sync_session
):
    transfer, _ = _pull_to_serializing(async_client, server_sync_session)

    for _ in range(3):
        polled = async_client.get(transfer["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED
    assert polled["server_fsic"] in ("", "{}", None)
    assert [job.state for job in stage_jobs()] == ["QUEUED"]


def test_push_finalization__every_stage_runs_in_its_own_job_and_cleanup_closes_the_session(
    background_everything, async_client, server_sync_session
):
    transfer = async_client.create(server_sync_session, push=True, records_total=0)
    async_client.proceed_to(transfer["id"], transfer_stages.SERIALIZING)
    async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    async_client.proceed_to(transfer["id"], transfer_stages.TRANSFERRING)

    for stage in (transfer_stages.DEQUEUING, transfer_stages.DESERIALIZING):
        response = async_client.proceed_to(transfer["id"], stage)
        assert response["transfer_stage_status"] == transfer_statuses.STARTED
        [job] = run_stage_jobs()
        assert job.job_id == job_id_for(transfer["id"], stage)
        assert async_client.get(transfer["id"])["transfer_stage_status"] == (
            transfer_statuses.COMPLETED
        )

    async_client.close(transfer["id"])
    assert TransferSession.objects.get(id=transfer["id"]).active is True
    [job] = run_stage_jobs()

    closed = TransferSession.objects.get(id=transfer["id"])
    assert job.job_id == job_id_for(transfer["id"], transfer_stages.CLEANUP)
    assert closed.active is False
    assert closed.transfer_stage == transfer_stages.CLEANUP
    assert closed.transfer_stage_status == transfer_statuses.COMPLETED


def test_push_serializing__only_finalization_stages_leave_the_request(
    background_everything, async_client, server_sync_session
):
    transfer = async_client.create(server_sync_session, push=True, records_total=0)

    response = async_client.proceed_to(transfer["id"], transfer_stages.SERIALIZING)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert no_stage_jobs_after()
