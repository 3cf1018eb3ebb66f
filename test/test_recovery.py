"""
A sync that an interruption or a busy database got in the way of still ends with
both sides holding the same data.
"""

import json

import pytest
from django.db import IntegrityError
from django.db import OperationalError
from kolibri.core.auth.models import FacilityUser
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import Store
from morango.sync.controller import MorangoProfileController

from kolibri_sync_extras_plugin import runner

from .helpers.constants import ALL_DATABASES
from .helpers.jobs import run_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def received_but_not_deserialized(facility):
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
    record.save()
    return learner


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


def test_record_that_failed_to_deserialize__is_not_retried_on_every_push(
    received_but_not_deserialized, async_client, server_sync_session
):
    Store.objects.filter(id=received_but_not_deserialized.id).update(
        deserialization_error="invalid"
    )

    _push_nothing_to_deserializing(async_client, server_sync_session)

    learner = FacilityUser.objects.get(id=received_but_not_deserialized.id)
    assert learner.full_name != "Renamed While Server Was Down"


class _FailsFirst(object):
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
        stage_middleware = runner.stage_middleware
        wrapper = {}

        def wrapped(stage):
            wrapper.setdefault(stage, _FailsFirst(stage_middleware(stage), error))
            return wrapper[stage]

        monkeypatch.setattr(runner, "stage_middleware", wrapped)
        monkeypatch.setattr(runner, "_RETRY_DELAY_SECONDS", 0.01)
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
