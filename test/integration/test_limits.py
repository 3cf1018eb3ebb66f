"""
The caps on unfinished stage jobs: a client asking for stages in a loop is refused
past its cap, with a message naming the option, while other clients go on.
"""

import time
import uuid

import pytest
from kolibri.core.auth.models import FacilityUser
from kolibri.core.tasks.main import job_storage
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import TransferSession
from morango.sync.context import LocalSessionContext

from kolibri_sync_extras_plugin.compat import job_rows
from kolibri_sync_extras_plugin.errors import StageJobLimitReached
from kolibri_sync_extras_plugin.job.worker_identity import reservation_extra
from kolibri_sync_extras_plugin.request.enqueue import release_reserved_job
from kolibri_sync_extras_plugin.request.enqueue import stage_job_request
from kolibri_sync_extras_plugin.request.limits import CAPS_LOCK_NAME
from kolibri_sync_extras_plugin.request.limits import reserve_within_limits
from kolibri_sync_extras_plugin.server_lock import lock_file_path
from kolibri_sync_extras_plugin.stage_status import job_id_for

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.locks import other_process_holding_lock
from ..helpers.options import sync_options
from ..helpers.sync_sessions import device_certificate
from ..helpers.sync_sessions import issue_test_certificate
from ..helpers.sync_sessions import learner_certificate
from ..helpers.sync_sessions import new_server_sync_session
from ..helpers.worker_processes import ended_process_identity
from ..helpers.worker_processes import live_identity

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


def _reserve(context):
    """Count the caps for the context's stage and reserve its job, as a request does."""
    return reserve_within_limits(context, stage_job_request(context))


def _job_state(job_id):
    rows = job_rows(job_id=job_id)
    return rows[0].state if rows else None


def _reserved_by(context, identity):
    """The context's stage reserved by the process ``identity`` names."""
    job_request = stage_job_request(context)
    assert _reserve(context)
    job_id = job_request["job_id"]
    update_job_row(job_id, worker_extra=reservation_extra(identity))
    return job_id


def test_per_client_cap__stages_asked_together__the_second_is_refused(
    one_per_client, async_client, facility
):
    # two requests of one client at once: both counted before either job is queued
    first = _serializing_context(async_client, facility, CLIENT)
    second = _serializing_context(async_client, facility, CLIENT)
    assert _reserve(first)

    with pytest.raises(StageJobLimitReached, match="MAX_STAGE_JOBS_PER_CLIENT"):
        _reserve(second)


def test_reserved_stage__pending_in_job_storage__until_its_request_queues_it(
    one_per_client, async_client, facility
):
    # the place is taken in job storage, where every server process counts it
    context = _serializing_context(async_client, facility, CLIENT)
    job_id = job_id_for(context.transfer_session.id, context.stage)

    _reserve(context)

    assert _job_state(job_id) == "PENDING"
    assert queued_stage_jobs(expected=0) == []


def test_per_client_cap__reservation_released__next_stage_accepted(
    one_per_client, async_client, facility
):
    first = _serializing_context(async_client, facility, CLIENT)
    second = _serializing_context(async_client, facility, CLIENT)
    _reserve(first)
    first_job_id = job_id_for(first.transfer_session.id, first.stage)

    release_reserved_job(first_job_id)

    assert _job_state(first_job_id) is None
    assert _reserve(second)


def test_per_client_cap__accepted_stage__queued_when_its_request_ends(
    one_per_client, async_client, facility
):
    transfer_id, response = _ask_for_serializing(async_client, facility, CLIENT)

    assert response.status_code == 200, response.content
    assert queued_stage_jobs(expected=1)[0].job_id == job_id_for(
        transfer_id, transfer_stages.SERIALIZING
    )
    assert job_rows(state="PENDING") == []


def test_per_client_cap__reservation_of_another_live_process__counts(
    one_per_client, async_client, facility
):
    # another uwsgi process of the server is still answering the first request
    first = _serializing_context(async_client, facility, CLIENT)
    _reserved_by(first, live_identity())
    second = _serializing_context(async_client, facility, CLIENT)

    with pytest.raises(StageJobLimitReached, match="MAX_STAGE_JOBS_PER_CLIENT"):
        _reserve(second)


def test_per_client_cap__reservation_of_a_dead_process__removed_and_not_counted(
    one_per_client, async_client, facility
):
    # the process was killed mid-request, before morango saved the stage as held
    first = _serializing_context(async_client, facility, CLIENT)
    abandoned = _reserved_by(first, ended_process_identity())
    second = _serializing_context(async_client, facility, CLIENT)

    assert _reserve(second)

    assert _job_state(abandoned) is None


@pytest.mark.parametrize(
    "status_left", [transfer_statuses.PENDING, transfer_statuses.STARTED]
)
def test_reservation_of_a_dead_process__next_count__stage_errored_job_removed(
    one_per_client, async_client, facility, status_left, caplog
):
    # the client's request failed with the process (a 502): its sync has stopped,
    # and an errored stage lets its next sync close the session at once
    first = _serializing_context(async_client, facility, CLIENT)
    abandoned = _reserved_by(first, ended_process_identity())
    TransferSession.objects.filter(id=first.transfer_session.id).update(
        transfer_stage=transfer_stages.SERIALIZING,
        transfer_stage_status=status_left,
    )
    left_at = TransferSession.objects.get(
        id=first.transfer_session.id
    ).last_activity_timestamp
    other = _serializing_context(async_client, facility, OTHER_CLIENT)

    assert _reserve(other)

    assert _job_state(abandoned) is None
    left = TransferSession.objects.get(id=first.transfer_session.id)
    assert left.transfer_stage_status == transfer_statuses.ERRORED
    # still idle since before the client's next sync, which closes it
    assert left.last_activity_timestamp == left_at
    assert abandoned in caplog.text


def test_reservation_of_a_dead_process__same_stage_asked_again__taken_over(
    one_per_client, async_client, facility
):
    context = _serializing_context(async_client, facility, CLIENT)
    job_id = _reserved_by(context, ended_process_identity())

    assert _reserve(context)

    assert job_rows(job_id=job_id)[0].worker_extra == reservation_extra(live_identity())


def test_reservation_of_a_live_process__same_stage_asked_again__not_taken(
    one_per_client, async_client, facility
):
    # a repeated request while the first is still being answered: one job only
    context = _serializing_context(async_client, facility, CLIENT)
    _reserved_by(context, live_identity())

    assert not _reserve(context)


def test_caps_lock_held_by_another_process__reservation_waits_for_it(
    one_per_client, async_client, facility
):
    # another server process counting the caps: this one counts after it
    context = _serializing_context(async_client, facility, CLIENT)
    job_id = job_id_for(context.transfer_session.id, context.stage)
    with other_process_holding_lock(lock_file_path(CAPS_LOCK_NAME), 0.5) as released_at:
        _reserve(context)
        reserved_at = time.time()

        assert reserved_at >= released_at()
    assert _job_state(job_id) == "PENDING"


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
