"""
The caps on unfinished stage jobs: a client asking for stages in a loop is refused
past its cap, with a message naming the option, while other clients go on.
"""

import uuid

import pytest
from kolibri.core.auth.models import FacilityUser
from kolibri.core.tasks.main import job_storage
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import TransferSession
from morango.sync.context import LocalSessionContext

from kolibri_sync_extras_plugin.errors import StageJobLimitReached
from kolibri_sync_extras_plugin.request.limits import refuse_stage_over_limits
from kolibri_sync_extras_plugin.request.limits import release_reservation
from kolibri_sync_extras_plugin.request.limits import reserved_stage_jobs
from kolibri_sync_extras_plugin.stage_status import job_id_for

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.options import sync_options
from ..helpers.sync_sessions import device_certificate
from ..helpers.sync_sessions import issue_test_certificate
from ..helpers.sync_sessions import learner_certificate
from ..helpers.sync_sessions import new_server_sync_session

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _ask_for_serializing(client, facility, client_instance_id, certificate=None):
    """
    A new pull of the client, asked to serialize: the server answers, and may queue
    a job. Each pull gets its own sync session, as morango resumes the open pull of
    a sync session instead of creating another.
    """
    sync_session = new_server_sync_session(
        facility, client_instance_id, client_certificate=certificate
    )
    # what the client's certificate may read: a learner's own data, or the facility
    sync_filter = (
        str(certificate.get_scope().read_filter) if certificate is not None else None
    )
    transfer = client.create(sync_session, push=False, sync_filter=sync_filter)
    response = client.ask_for_stage(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    return transfer["id"], response


def _stage_status(transfer_session_id):
    return TransferSession.objects.get(id=transfer_session_id).transfer_stage_status


@pytest.fixture
def two_per_client(background_everything):
    with sync_options(MAX_STAGE_JOBS_PER_CLIENT=2, MAX_STAGE_JOBS=10):
        yield


CLIENT = uuid.uuid4().hex
OTHER_CLIENT = uuid.uuid4().hex


@pytest.fixture
def client_at_its_cap(two_per_client, async_client, facility):
    """A client that has asked for two stages, whose jobs wait in the queue."""
    for _ in range(2):
        _, response = _ask_for_serializing(async_client, facility, CLIENT)
        assert response.status_code == 200, response.content
    assert len(queued_stage_jobs(expected=2)) == 2


def test_per_client_cap__stage_past_it__refused_with_503_naming_the_option(
    client_at_its_cap, async_client, facility
):
    transfer_id, response = _ask_for_serializing(async_client, facility, CLIENT)

    assert response.status_code == 503
    assert "[Sync] MAX_STAGE_JOBS_PER_CLIENT = 2" in response.json()["detail"]
    assert _stage_status(transfer_id) == transfer_statuses.ERRORED


def test_per_client_cap__stage_past_it__status_line_names_the_option(
    client_at_its_cap, async_client, facility
):
    _, response = _ask_for_serializing(async_client, facility, CLIENT)

    assert "[Sync] MAX_STAGE_JOBS_PER_CLIENT = 2" in response.reason_phrase


def test_per_client_cap__stage_past_it__no_job_queued(
    client_at_its_cap, async_client, facility
):
    _ask_for_serializing(async_client, facility, CLIENT)

    assert len(queued_stage_jobs(expected=3, timeout=1)) == 2


def test_per_client_cap__stage_past_it__server_logs_the_refusal(
    client_at_its_cap, async_client, facility, caplog
):
    _ask_for_serializing(async_client, facility, CLIENT)

    assert any(
        "Refused stage serializing" in record.getMessage()
        and "MAX_STAGE_JOBS_PER_CLIENT = 2" in record.getMessage()
        for record in caplog.records
    )


def test_per_client_cap__another_client__still_accepted(
    client_at_its_cap, async_client, facility
):
    transfer_id, response = _ask_for_serializing(async_client, facility, OTHER_CLIENT)

    assert response.status_code == 200, response.content
    assert _stage_status(transfer_id) == transfer_statuses.STARTED


def test_per_client_cap__jobs_finished__client_accepted_again(
    client_at_its_cap, async_client, facility
):
    run_stage_jobs(expected=2)

    transfer_id, response = _ask_for_serializing(async_client, facility, CLIENT)

    assert response.status_code == 200, response.content
    assert _stage_status(transfer_id) == transfer_statuses.STARTED


def test_total_cap__reached_by_other_clients__stage_refused_naming_the_option(
    background_everything, async_client, facility
):
    with sync_options(MAX_STAGE_JOBS_PER_CLIENT=5, MAX_STAGE_JOBS=2):
        for _ in range(2):
            _, response = _ask_for_serializing(async_client, facility, uuid.uuid4().hex)
            assert response.status_code == 200, response.content
        queued_stage_jobs(expected=2)

        _, response = _ask_for_serializing(async_client, facility, uuid.uuid4().hex)

    assert response.status_code == 503
    assert "[Sync] MAX_STAGE_JOBS = 2" in response.json()["detail"]


def test_per_client_cap__finished_jobs_of_the_client__do_not_count(
    two_per_client, async_client, facility
):
    for _ in range(3):
        _, response = _ask_for_serializing(async_client, facility, CLIENT)
        assert response.status_code == 200, response.content
        run_stage_jobs()

    assert len(job_storage.filter_jobs(state="COMPLETED")) == 3


def _serializing_context(client, facility, client_instance_id):
    """A pull of the client about to serialize, its job neither refused nor queued."""
    sync_session = new_server_sync_session(facility, client_instance_id)
    transfer = client.create(sync_session, push=False)
    context = LocalSessionContext(
        sync_session=sync_session,
        transfer_session=TransferSession.objects.get(id=transfer["id"]),
    )
    context.update(stage=transfer_stages.SERIALIZING)
    return context


@pytest.fixture
def one_per_client(background_everything):
    with sync_options(MAX_STAGE_JOBS_PER_CLIENT=1, MAX_STAGE_JOBS=10):
        yield


def test_per_client_cap__stages_asked_together__the_second_is_refused(
    one_per_client, async_client, facility
):
    # two requests of one client at once: both counted before either job exists
    first = _serializing_context(async_client, facility, CLIENT)
    second = _serializing_context(async_client, facility, CLIENT)
    refuse_stage_over_limits(first)
    try:
        with pytest.raises(StageJobLimitReached, match="MAX_STAGE_JOBS_PER_CLIENT"):
            refuse_stage_over_limits(second)
    finally:
        release_reservation(job_id_for(first.transfer_session.id, first.stage))


def test_per_client_cap__reservation_released__next_stage_accepted(
    one_per_client, async_client, facility
):
    first = _serializing_context(async_client, facility, CLIENT)
    second = _serializing_context(async_client, facility, CLIENT)
    refuse_stage_over_limits(first)
    release_reservation(job_id_for(first.transfer_session.id, first.stage))

    refuse_stage_over_limits(second)

    release_reservation(job_id_for(second.transfer_session.id, second.stage))
    assert reserved_stage_jobs() == {}


def test_per_client_cap__accepted_stage__reservation_ends_when_its_job_is_queued(
    one_per_client, async_client, facility
):
    transfer_id, response = _ask_for_serializing(async_client, facility, CLIENT)

    assert response.status_code == 200, response.content
    assert reserved_stage_jobs() == {}
    assert queued_stage_jobs(expected=1)[0].job_id == job_id_for(
        transfer_id, transfer_stages.SERIALIZING
    )


def test_per_client_cap__push_cleanup_past_it__never_refused(
    client_at_its_cap, async_client, facility
):
    # the push's data is applied: refusing its cleanup would fail a complete sync
    sync_session = new_server_sync_session(facility, CLIENT)
    transfer = async_client.create(sync_session, push=True)
    TransferSession.objects.filter(id=transfer["id"]).update(
        transfer_stage=transfer_stages.DESERIALIZING,
        transfer_stage_status=transfer_statuses.COMPLETED,
    )

    response = async_client.client.delete(
        async_client._url(transfer["id"]), **async_client.extra
    )

    assert response.status_code == 204, response.content
    cleanup = [
        job
        for job in queued_stage_jobs(expected=3)
        if job.kwargs["stage"] == transfer_stages.CLEANUP
    ]
    assert len(cleanup) == 1


def test_per_client_cap__one_certificate_claiming_fresh_instance_ids__refused_past_it(
    two_per_client, async_client, facility
):
    """morango records whatever instance id a client claims; the signature is the client's."""
    certificate = device_certificate(facility)
    statuses = [
        _ask_for_serializing(
            async_client, facility, uuid.uuid4().hex, certificate=certificate
        )[1].status_code
        for _ in range(4)
    ]

    assert statuses == [200, 200, 503, 503]


def test_per_client_cap__another_certificate_claiming_the_clients_instance_id__accepted(
    client_at_its_cap, async_client, facility
):
    impostor = device_certificate(facility)

    transfer_id, response = _ask_for_serializing(
        async_client, facility, CLIENT, certificate=impostor
    )

    assert response.status_code == 200, response.content
    assert _stage_status(transfer_id) == transfer_statuses.STARTED


def test_per_client_cap__learners_new_certificates__counted_as_that_learner(
    two_per_client, async_client, facility
):
    learner = FacilityUser.objects.filter(facility=facility).first()
    statuses = [
        _ask_for_serializing(
            async_client,
            facility,
            uuid.uuid4().hex,
            certificate=learner_certificate(facility, learner),
        )[1].status_code
        for _ in range(3)
    ]

    assert statuses == [200, 200, 503]


def test_per_client_cap__certificate_a_learner_signed_below_theirs__counted_as_them(
    two_per_client, async_client, facility
):
    learner = FacilityUser.objects.filter(facility=facility).first()
    own = issue_test_certificate(
        facility.dataset.get_root_certificate(),
        user_id=learner.id,
        keep_private_key=True,
    )
    for _ in range(2):
        _, response = _ask_for_serializing(
            async_client, facility, uuid.uuid4().hex, certificate=own
        )
        assert response.status_code == 200, response.content

    signed_below = issue_test_certificate(own, user_id=learner.id)
    _, response = _ask_for_serializing(
        async_client, facility, uuid.uuid4().hex, certificate=signed_below
    )

    assert response.status_code == 503


def test_per_client_cap__another_learner__still_accepted(
    two_per_client, async_client, facility
):
    first, second = FacilityUser.objects.filter(facility=facility)[:2]
    for _ in range(2):
        _ask_for_serializing(
            async_client,
            facility,
            uuid.uuid4().hex,
            certificate=learner_certificate(facility, first),
        )

    _, response = _ask_for_serializing(
        async_client,
        facility,
        uuid.uuid4().hex,
        certificate=learner_certificate(facility, second),
    )

    assert response.status_code == 200, response.content
