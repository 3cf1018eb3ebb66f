"""
A sync that an interruption or a busy database got in the way of still ends with
both sides holding the same data.
"""

import json
import uuid

import pytest
from django.db import IntegrityError
from django.db import OperationalError
from django.utils import timezone
from kolibri.core.auth.models import FacilityUser
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import Store
from morango.models.core import SyncSession
from morango.models.core import TransferSession
from morango.sync.controller import MorangoProfileController

from kolibri_sync_extras_plugin import stages
from kolibri_sync_extras_plugin.job import controller
from kolibri_sync_extras_plugin.request.enqueue import enqueue_stage_job
from kolibri_sync_extras_plugin.stage_status import job_id_for

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import run_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _push_session(sync_session):
    """A push of ``sync_session``'s client whose deserializing failed."""
    return TransferSession.objects.create(
        id=uuid.uuid4().hex,
        sync_session=sync_session,
        push=True,
        active=True,
        filter=sync_session.server_certificate.get_root().id,
        transfer_stage=transfer_stages.DESERIALIZING,
        transfer_stage_status=transfer_statuses.ERRORED,
        start_timestamp=timezone.now(),
        last_activity_timestamp=timezone.now(),
    )


def _earlier_sync_session(sync_session, **changes):
    """An earlier sync session of ``sync_session``'s client (or as ``changes`` say)."""
    earlier = SyncSession.objects.get(id=sync_session.id)
    earlier.id = uuid.uuid4().hex
    for name, value in changes.items():
        setattr(earlier, name, value)
    earlier.save(force_insert=True)
    return earlier


@pytest.fixture
def interrupted_push(server_sync_session):
    """The same client's earlier push, in the sync session that failed."""
    return _push_session(_earlier_sync_session(server_sync_session))


@pytest.fixture
def received_but_not_deserialized(facility, interrupted_push):
    """
    A learner's new name sits in morango's store, merged by a push whose
    deserializing never finished: the state a server crash leaves behind.
    """
    MorangoProfileController("facilitydata").serialize_into_store()
    learner = FacilityUser.objects.filter(facility=facility).first()
    record = Store.objects.get(id=learner.id)
    serialized = json.loads(record.serialized)
    serialized["full_name"] = "Renamed While Server Was Down"
    record.serialized = json.dumps(serialized)
    record.dirty_bit = True
    record.last_transfer_session_id = interrupted_push.id
    record.save()
    return learner


def _renamed(learner):
    return (
        FacilityUser.objects.get(id=learner.id).full_name
        == "Renamed While Server Was Down"
    )


def _push_nothing_to_deserializing(client, sync_session):
    transfer = client.create(sync_session, push=True, records_total=0)
    for stage in (
        transfer_stages.SERIALIZING,
        transfer_stages.QUEUING,
        transfer_stages.TRANSFERRING,
        transfer_stages.DEQUEUING,
    ):
        client.proceed_to(transfer["id"], stage)
    return transfer, client.proceed_to(transfer["id"], transfer_stages.DESERIALIZING)


def test_retried_push_transfers_nothing__leftover_records_are_deserialized(
    received_but_not_deserialized, async_client, server_sync_session
):
    _, response = _push_nothing_to_deserializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    learner = FacilityUser.objects.get(id=received_but_not_deserialized.id)
    assert learner.full_name == "Renamed While Server Was Down"
    assert not Store.objects.get(id=learner.id).dirty_bit


def test_retried_push_transfers_nothing__in_the_background_too(
    received_but_not_deserialized,
    background_everything,
    async_client,
    server_sync_session,
):
    transfer = async_client.create(server_sync_session, push=True, records_total=0)
    for stage in (transfer_stages.QUEUING, transfer_stages.TRANSFERRING):
        async_client.proceed_to(transfer["id"], stage)
    for stage in (transfer_stages.DEQUEUING, transfer_stages.DESERIALIZING):
        response = async_client.proceed_to(transfer["id"], stage)
        assert response["transfer_stage_status"] == transfer_statuses.STARTED
        run_stage_jobs()

    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )
    learner = FacilityUser.objects.get(id=received_but_not_deserialized.id)
    assert learner.full_name == "Renamed While Server Was Down"


def test_leftovers_applied__post_transfer_work_run_for_the_push_they_came_from(
    received_but_not_deserialized,
    interrupted_push,
    async_client,
    server_sync_session,
    monkeypatch,
):
    cleaned_up = []
    signal = stages.stage_signal(transfer_stages.CLEANUP).completed
    monkeypatch.setattr(
        signal,
        "_handlers",
        signal._handlers
        + [lambda context, **kw: cleaned_up.append(context.transfer_session.id)],
    )

    _push_nothing_to_deserializing(async_client, server_sync_session)

    assert _renamed(received_but_not_deserialized)
    assert cleaned_up == [interrupted_push.id]


def test_leftovers_of_another_clients_push__left_alone(
    received_but_not_deserialized, interrupted_push, async_client, server_sync_session
):
    other_client = _earlier_sync_session(
        server_sync_session, client_instance_id=uuid.uuid4()
    )
    TransferSession.objects.filter(id=interrupted_push.id).update(
        sync_session=other_client
    )

    _push_nothing_to_deserializing(async_client, server_sync_session)

    assert not _renamed(received_but_not_deserialized)


def test_leftovers_of_a_push_whose_job_is_still_queued__left_to_that_job(
    received_but_not_deserialized, interrupted_push, async_client, server_sync_session
):
    TransferSession.objects.filter(id=interrupted_push.id).update(
        transfer_stage_status=transfer_statuses.STARTED
    )
    job_id = job_id_for(interrupted_push.id, transfer_stages.DESERIALIZING)
    enqueue_stage_job(
        dict(
            job_id=job_id,
            facility_id=None,
            extra_metadata={},
            kwargs=dict(
                transfer_session_id=interrupted_push.id,
                stage=transfer_stages.DESERIALIZING,
                request_data={},
                capabilities=[],
            ),
        )
    )

    _push_nothing_to_deserializing(async_client, server_sync_session)

    assert not _renamed(received_but_not_deserialized)


def test_leftovers_outside_the_pushing_clients_filter__left_alone(
    received_but_not_deserialized, async_client, server_sync_session
):
    # a client whose filter is one learner's partition, not the learner renamed
    record = Store.objects.get(id=received_but_not_deserialized.id)
    other_learner = (
        FacilityUser.objects.exclude(id=record.id)
        .filter(facility_id=received_but_not_deserialized.facility_id)
        .first()
    )
    own_partition = "{}:user-ro:{}".format(
        received_but_not_deserialized.dataset_id, other_learner.id
    )
    assert not record.partition.startswith(own_partition)
    transfer = async_client.create(server_sync_session, push=True, records_total=0)
    TransferSession.objects.filter(id=transfer["id"]).update(filter=own_partition)
    for stage in (
        transfer_stages.SERIALIZING,
        transfer_stages.QUEUING,
        transfer_stages.TRANSFERRING,
        transfer_stages.DEQUEUING,
        transfer_stages.DESERIALIZING,
    ):
        async_client.proceed_to(transfer["id"], stage)

    assert not _renamed(received_but_not_deserialized)


def test_record_that_failed_to_deserialize__is_not_retried_on_every_push(
    received_but_not_deserialized, async_client, server_sync_session
):
    Store.objects.filter(id=received_but_not_deserialized.id).update(
        deserialization_error="invalid"
    )

    _push_nothing_to_deserializing(async_client, server_sync_session)

    learner = FacilityUser.objects.get(id=received_but_not_deserialized.id)
    assert learner.full_name != "Renamed While Server Was Down"


class _FailsFirst:
    """The stage's real operations, behind a first attempt that meets ``error``."""

    def __init__(self, middleware, error):
        self.middleware = middleware
        self.error = error
        self.calls = 0

    def __call__(self, context):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.middleware(context)


@pytest.fixture
def first_attempt_meets(monkeypatch):
    def install(error):
        stage_middleware = controller.stage_middleware
        wrapper = {}

        def wrapped(stage):
            wrapper.setdefault(stage, _FailsFirst(stage_middleware(stage), error))
            return wrapper[stage]

        monkeypatch.setattr(controller, "stage_middleware", wrapped)
        monkeypatch.setattr(controller, "_RETRY_DELAY_SECONDS", 0.01)
        return wrapper

    return install


def _pull_serializing_job(client, sync_session):
    transfer = client.create(sync_session, push=False)
    client.proceed_to(transfer["id"], transfer_stages.SERIALIZING, client_fsic="{}")
    [job] = run_stage_jobs()
    return transfer, job


def test_busy_database_in_the_job__stage_is_retried_and_completes(
    background_everything, first_attempt_meets, async_client, server_sync_session
):
    wrappers = first_attempt_meets(OperationalError("database is locked"))

    transfer, job = _pull_serializing_job(async_client, server_sync_session)

    assert wrappers[transfer_stages.SERIALIZING].calls == 2
    assert job.state == "COMPLETED"
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )


def _unique_violation(message):
    """A unique violation as Django raises it from PostgreSQL: psycopg2's as its cause."""
    from psycopg2.errors import UniqueViolation

    error = IntegrityError(message)
    error.__cause__ = UniqueViolation(message)
    return error


def test_concurrent_insert_on_postgresql_in_the_job__stage_is_retried_and_completes(
    background_everything, first_attempt_meets, async_client, server_sync_session
):
    # what a second client's serializing meets when a first one's committed the
    # same store records after the second's snapshot was taken
    wrappers = first_attempt_meets(
        _unique_violation(
            'duplicate key value violates unique constraint "morango_store_pkey"'
        )
    )

    transfer, job = _pull_serializing_job(async_client, server_sync_session)

    assert wrappers[transfer_stages.SERIALIZING].calls == 2
    assert job.state == "COMPLETED"
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )


def test_unique_violation_on_sqlite_in_the_job__stage_errored_without_retry(
    background_everything, first_attempt_meets, async_client, server_sync_session
):
    wrappers = first_attempt_meets(
        IntegrityError("UNIQUE constraint failed: morango_store.id")
    )

    transfer, job = _pull_serializing_job(async_client, server_sync_session)

    assert wrappers[transfer_stages.SERIALIZING].calls == 1
    assert job.state == "FAILED"
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.ERRORED
    )


def test_other_database_error_in_the_job__stage_errored_without_retry(
    background_everything, first_attempt_meets, async_client, server_sync_session
):
    wrappers = first_attempt_meets(OperationalError("no such table: morango_store"))

    transfer, job = _pull_serializing_job(async_client, server_sync_session)

    assert wrappers[transfer_stages.SERIALIZING].calls == 1
    assert job.state == "FAILED"
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.ERRORED
    )
