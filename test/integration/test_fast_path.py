"""
Small background stages run in the request that asks for them, so a small sync
waits no polling interval; larger ones still go to a job.
"""

import time
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.db import OperationalError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kolibri.core.auth.models import Classroom
from kolibri.core.auth.models import FacilityUser
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import DeletedModels
from morango.models.core import HardDeletedModels
from morango.models.core import Store
from morango.models.core import TransferSession
from morango.registry import syncable_models

from kolibri_sync_extras_plugin.job.context import BackgroundSessionContext
from kolibri_sync_extras_plugin.piecewise.stamping import changed_rows_of
from kolibri_sync_extras_plugin.piecewise.support import supports_installed_morango
from kolibri_sync_extras_plugin.request.inline import RECENT_ACTIVITY
from kolibri_sync_extras_plugin.request.inline import runs_inline
from kolibri_sync_extras_plugin.stage_records import records_touched
from kolibri_sync_extras_plugin.stage_status import job_id_for
from kolibri_sync_extras_plugin.writer_turn import lock_file_path

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.jobs import no_stage_jobs_after
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.jobs import stage_jobs
from ..helpers.locks import other_process_holding_lock
from ..helpers.options import sync_options
from ..helpers.records import facility_records
from ..helpers.sync_sessions import new_server_sync_session

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

#: Far above the suite's facility (about 30 records), far below a large one.
GENEROUS = 500

#: The records of the ``pushed_learner_edits`` push: the facility's learners.
PUSHED = 12


def _pull_to_serializing(client, sync_session):
    transfer = client.create(sync_session, push=False)
    return transfer, client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )


def _assert_left_to_a_job(response, stage):
    assert response["transfer_stage_status"] == transfer_statuses.STARTED
    [job] = queued_stage_jobs()
    assert job.kwargs["stage"] == stage


def test_pull_serializing__tiny_stage__answered_completed_by_the_request_itself(
    background_everything, async_client, server_sync_session
):
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    # the client has its answer without sleeping before a poll
    assert response["transfer_stage"] == transfer_stages.SERIALIZING
    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert (
        server_sync_session.server_certificate.get_root().id in response["server_fsic"]
    )
    assert no_stage_jobs_after()


@pytest.fixture
def another_device_pulling(async_client, facility):
    """Another device's pull, open on the server at its serializing stage."""
    transfer = async_client.create(new_server_sync_session(facility), push=False)
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    return transfer


def test_pull_serializing__tiny_stage_while_another_device_syncs__goes_to_a_job(
    background_everything, async_client, server_sync_session, another_device_pulling
):
    # in a request it would share the processor with every other device's work
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.STARTED
    assert job_id_for(transfer["id"], transfer_stages.SERIALIZING) in {
        job.job_id for job in queued_stage_jobs()
    }
    run_stage_jobs()
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )


@pytest.mark.parametrize(
    "no_longer_syncing",
    [
        # that device has closed its transfer: only its cleanup job is left
        pytest.param(
            dict(transfer_stage=transfer_stages.CLEANUP), id="other at its cleanup"
        ),
        # a client that died mid-sync leaves its session open: it is not syncing
        pytest.param(
            dict(
                last_activity_timestamp=lambda: (
                    timezone.now() - RECENT_ACTIVITY - timedelta(seconds=1)
                )
            ),
            id="other idle for long",
        ),
    ],
)
def test_pull_serializing__tiny_stage_beside_a_transfer_no_longer_syncing__answered_by_the_request(
    background_everything,
    async_client,
    server_sync_session,
    another_device_pulling,
    no_longer_syncing,
):
    TransferSession.objects.filter(id=another_device_pulling["id"]).update(
        **{
            field: value() if callable(value) else value
            for field, value in no_longer_syncing.items()
        }
    )

    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert job_id_for(transfer["id"], transfer_stages.SERIALIZING) not in {
        job.job_id for job in stage_jobs()
    }


def test_pull_serializing__stage_above_the_threshold__still_runs_in_a_job(
    background_everything, async_client, server_sync_session
):
    with sync_options(INLINE_STAGE_RECORDS=1):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    _assert_left_to_a_job(response, transfer_stages.SERIALIZING)


def test_pull_serializing__tiny_stage_while_a_stage_job_writes__goes_to_a_job_at_once(
    background_everything, async_client, server_sync_session
):
    # a stage job in another worker process holds the writers' turn: run in the
    # request, the stage would wait there for SQLite's lock behind its pieces
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS), other_process_holding_lock(
        lock_file_path(), 3
    ) as released_at:
        transfer, response = _pull_to_serializing(async_client, server_sync_session)
        answered_at = time.time()

        assert answered_at < released_at()
    _assert_left_to_a_job(response, transfer_stages.SERIALIZING)
    run_stage_jobs()
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )


@pytest.fixture
def request_budget_of_one_piece(monkeypatch):
    """Every stage run in the request gets past its budget with its first piece."""
    from kolibri_sync_extras_plugin.request import operation

    if not supports_installed_morango():
        pytest.skip("morango's own stages, not the plugin's pieces, run here")
    monkeypatch.setattr(operation, "REQUEST_PIECES_SECONDS", 0, raising=False)


def test_pull_serializing__pieces_past_the_request_budget__a_job_serializes_the_rest(
    background_everything,
    async_client,
    facility,
    server_sync_session,
    request_budget_of_one_piece,
):
    classrooms = [
        Classroom.objects.create(name="Class {}".format(n), parent=facility)
        for n in range(30)
    ]
    stored_before = Store.objects.count()

    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    _assert_left_to_a_job(response, transfer_stages.SERIALIZING)
    # the pieces the request committed stay done
    assert Store.objects.count() > stored_before
    assert Classroom.objects.filter(_morango_dirty_bit=True).exists()
    run_stage_jobs()
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )
    assert not Classroom.objects.filter(_morango_dirty_bit=True).exists()
    assert Store.objects.filter(id__in=[c.id for c in classrooms]).count() == 30


def test_push_deserializing__pieces_past_the_request_budget__a_job_applies_the_rest(
    pushed_learner_edits, async_client, request_budget_of_one_piece
):
    run_stage_jobs()  # the fixture's dequeuing, in a job
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        response = async_client.proceed_to(
            pushed_learner_edits["id"], transfer_stages.DESERIALIZING
        )

    _assert_left_to_a_job(response, transfer_stages.DESERIALIZING)
    renamed = FacilityUser.objects.filter(full_name__startswith="Renamed ")
    assert renamed.count() < PUSHED
    run_stage_jobs()
    assert async_client.get(pushed_learner_edits["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )
    assert renamed.count() == PUSHED


def test_pull__tiny_stages__whole_initialization_inline_and_records_queued(
    background_everything, async_client, server_sync_session
):
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, _ = _pull_to_serializing(async_client, server_sync_session)
        response = async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)

    assert response["transfer_stage"] == transfer_stages.QUEUING
    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert response["records_total"] >= 27
    assert no_stage_jobs_after()


def test_pull_queuing__inline_stage_fails__error_reaches_the_client(
    background_everything, async_client, server_sync_session
):
    transfer = async_client.create(server_sync_session, push=False)
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        # a client_fsic that is not JSON makes queuing raise
        async_client.proceed_to(
            transfer["id"], transfer_stages.SERIALIZING, client_fsic="not json"
        )
        response = async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)

    assert response["transfer_stage"] == transfer_stages.QUEUING
    assert response["transfer_stage_status"] == transfer_statuses.ERRORED
    assert no_stage_jobs_after()


def test_push_deserializing__tiny_push__deserialized_in_the_request(
    pushed_learner_edits, async_client
):
    run_stage_jobs()  # the fixture's dequeuing, in a job
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        response = async_client.proceed_to(
            pushed_learner_edits["id"], transfer_stages.DESERIALIZING
        )

    assert response["transfer_stage"] == transfer_stages.DESERIALIZING
    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    time.sleep(1)  # a job would be enqueued once the request had finished
    assert [job.kwargs["stage"] for job in stage_jobs()] == [transfer_stages.DEQUEUING]


def test_push_cleanup__tiny_push__still_runs_in_a_job(
    pushed_learner_edits, async_client
):
    # the client never waits for cleanup, so a job costs it nothing
    run_stage_jobs()  # the fixture's dequeuing, in a job
    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        async_client.proceed_to(
            pushed_learner_edits["id"], transfer_stages.DESERIALIZING
        )
        async_client.close(pushed_learner_edits["id"])

    [job] = queued_stage_jobs()
    assert job.kwargs["stage"] == transfer_stages.CLEANUP


def _context(transfer):
    """The server's context of ``transfer``'s stage, as its job rebuilds it."""
    transfer_session = TransferSession.objects.get(id=transfer["id"])
    return BackgroundSessionContext(transfer_session)


def test_records_touched__push_at_dequeuing__what_was_transferred(
    pushed_learner_edits,
):
    context = _context(pushed_learner_edits)

    assert context.stage == transfer_stages.DEQUEUING
    assert records_touched(context) == PUSHED
    assert context.transfer_session.records_transferred == PUSHED


def test_records_touched__push_at_deserializing__its_own_records_and_nothing_else(
    pushed_and_dequeued,
):
    # the facility was serialized when the client pulled it: nothing else waits
    context = _context(pushed_and_dequeued)

    assert context.stage == transfer_stages.DESERIALIZING
    assert records_touched(context) == PUSHED


def test_records_touched__push_at_deserializing__nothing_dirty__none_though_local_changes_wait(
    pushed_and_dequeued,
):
    # another push's stage has applied every record: the pieces then serialize
    # nothing first, so the local change is the next pull's to serialize
    _applied_elsewhere()
    _rename_class_a()
    context = _context(pushed_and_dequeued)

    if supports_installed_morango():
        assert records_touched(context) == 0
    else:
        # morango's own receiver serializes first whatever is left to apply
        assert records_touched(context) >= 1


def test_records_touched__push_at_deserializing__nothing_dirty__weighed_in_one_query(
    pushed_and_dequeued,
):
    if not supports_installed_morango():
        pytest.skip("morango's own stages, not the plugin's pieces, run here")
    _applied_elsewhere()
    context = _context(pushed_and_dequeued)

    with CaptureQueriesContext(connection) as queries:
        assert records_touched(context, at_most=0) == 0

    # not one for each syncable model, as a stage with records left takes
    assert len(queries) == 1


def test_records_touched__push_at_deserializing__weighed_in_two_statements(
    pushed_and_dequeued,
):
    # the received records, then what is serialized first, all models at once
    context = _context(pushed_and_dequeued)
    records_touched(context, at_most=GENEROUS)

    with CaptureQueriesContext(connection) as queries:
        assert records_touched(context, at_most=GENEROUS) == PUSHED

    assert len(queries) == 2


def test_records_touched__kept_statement__counts_what_changed_since(
    pushed_and_dequeued,
):
    # what is kept is the compiled statement, never its count
    context = _context(pushed_and_dequeued)
    assert records_touched(context, at_most=GENEROUS) == PUSHED

    _rename_class_a()

    assert records_touched(context, at_most=GENEROUS) == PUSHED + 1
    assert records_touched(context) == PUSHED + 1


def test_records_touched__pull_at_serializing__changed_rows_counted_as_each_model_would(
    pull_at_serializing,
):
    # one statement over every syncable model equals the counts model by model
    _rename_class_a()
    context = _context(pull_at_serializing)
    profile = context.sync_session.profile
    separately = sum(
        changed_rows_of(model, context.filter).count()
        for model in syncable_models.get_models(profile)
    )
    separately += DeletedModels.objects.filter(profile=profile).count()
    separately += HardDeletedModels.objects.filter(profile=profile).count()

    assert separately > 0
    assert records_touched(context) == separately
    assert records_touched(context, at_most=separately) == separately
    assert records_touched(context, at_most=separately - 1) == separately


def _applied_elsewhere():
    """Deserialize everything received, as another push's deserializing does."""
    from morango.sync.operations import _deserialize_from_store

    _deserialize_from_store("facilitydata")


def _rename_class_a():
    classroom = Classroom.objects.get(name="Class A")
    classroom.name = "Class A, renamed on the server"
    classroom.save()


def test_records_touched__at_most__counts_no_further_than_one_past_it(
    pushed_and_dequeued,
):
    assert records_touched(_context(pushed_and_dequeued), at_most=5) == 6


@pytest.fixture
def dequeued_push(pushed_learner_edits):
    """The push of :data:`PUSHED` learners, dequeued by its job."""
    run_stage_jobs()
    return pushed_learner_edits


def _deserialize(client, push, threshold):
    with sync_options(INLINE_STAGE_RECORDS=threshold):
        return client.proceed_to(push["id"], transfer_stages.DESERIALIZING)


def _failed_before(records):
    """
    Learners another client pushed that the server could not apply: store records
    left dirty, with the error morango recorded.
    """
    learner = (
        Store.objects.filter(model_name=FacilityUser.morango_model_name)
        .values()
        .first()
    )
    learner.update(dirty_bit=True, deserialization_error="username already taken")
    Store.objects.bulk_create(
        Store(**dict(learner, id=uuid.uuid4().hex)) for _ in range(records)
    )


def test_push_deserializing__exactly_its_records_at_the_threshold__in_the_request(
    dequeued_push, async_client
):
    response = _deserialize(async_client, dequeued_push, threshold=PUSHED)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    time.sleep(1)  # a job would be enqueued once the request had finished
    assert [job.kwargs["stage"] for job in stage_jobs()] == [transfer_stages.DEQUEUING]


def test_push_deserializing__many_records_that_failed_before__goes_to_a_job(
    dequeued_push, async_client
):
    # morango tries every dirty record again: the push is small, its stage is not
    _failed_before(GENEROUS)

    response = _deserialize(async_client, dequeued_push, threshold=GENEROUS)

    _assert_left_to_a_job(response, transfer_stages.DESERIALIZING)


def test_push_deserializing__local_change_to_serialize_first__goes_to_a_job(
    dequeued_push, async_client
):
    _rename_class_a()

    response = _deserialize(async_client, dequeued_push, threshold=PUSHED)

    _assert_left_to_a_job(response, transfer_stages.DESERIALIZING)


def test_push_deserializing__deletions_to_serialize_first__goes_to_a_job(
    dequeued_push, async_client
):
    # the class and its learners' memberships: deletions morango applies to the
    # store before it deserializes
    Classroom.objects.get(name="Class A").delete()

    response = _deserialize(async_client, dequeued_push, threshold=PUSHED)

    _assert_left_to_a_job(response, transfer_stages.DESERIALIZING)


@pytest.fixture
def pulled_before(async_client, facility):
    """The facility, serialized when another device pulled it: nothing is dirty."""
    device = new_server_sync_session(facility)
    facility_records(async_client, device)
    # that device's sync is over (this client's pull never moves past transferring)
    TransferSession.objects.filter(sync_session=device).update(active=False)


def test_pull_serializing__nothing_changed_but_deletions__goes_to_a_job(
    pulled_before, async_client, server_sync_session
):
    # the class and its learners' memberships: deletions morango applies to the
    # store as it serializes
    Classroom.objects.get(name="Class A").delete()

    with sync_options(BACKGROUND_INITIALIZATION=True, INLINE_STAGE_RECORDS=1):
        _, response = _pull_to_serializing(async_client, server_sync_session)

    _assert_left_to_a_job(response, transfer_stages.SERIALIZING)


def test_pull_serializing__nothing_changed__in_the_request(
    pulled_before, async_client, server_sync_session
):
    with sync_options(BACKGROUND_INITIALIZATION=True, INLINE_STAGE_RECORDS=1):
        _, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert no_stage_jobs_after()


def test_runs_inline__first_source_past_the_limit__decided_in_one_query(
    pushed_and_dequeued,
):
    # the dirty store records already exceed it: the app's tables are not read
    _failed_before(PUSHED)
    context = _context(pushed_and_dequeued)

    with sync_options(INLINE_STAGE_RECORDS=PUSHED):
        with CaptureQueriesContext(connection) as queries:
            assert not runs_inline(context)

    # one look at other devices' transfers, one count of the store
    assert len(queries) == 2


def test_pull_queuing__cheap_records__inline_where_serializing_as_many_is_not(
    background_everything, async_client, server_sync_session
):
    # the facility's ~30 records weigh 4 deserialized records when serialized, and
    # less than one when queued
    with sync_options(INLINE_STAGE_RECORDS=1):
        transfer, serializing = _pull_to_serializing(async_client, server_sync_session)
        run_stage_jobs()
        queuing = async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)

    assert serializing["transfer_stage_status"] == transfer_statuses.STARTED
    assert queuing["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert queuing["records_total"] >= 27
    time.sleep(1)  # a job would be enqueued once the request had finished
    assert [job.kwargs["stage"] for job in stage_jobs()] == [
        transfer_stages.SERIALIZING
    ]


def test_inline_stage_records__zero__every_configured_stage_goes_to_a_job(
    background_everything, async_client, server_sync_session
):
    with sync_options(INLINE_STAGE_RECORDS=0):
        _, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.STARTED
    assert len(queued_stage_jobs()) == 1


def _unique_violation_on_postgresql():
    """What a second serialization meets on PostgreSQL when a concurrent one has
    just committed the same store records: Django's error, psycopg2's as its cause."""
    from psycopg2.errors import UniqueViolation

    message = 'duplicate key value violates unique constraint "morango_store_pkey"'
    error = IntegrityError(message)
    error.__cause__ = UniqueViolation(message)
    return error


@pytest.fixture
def serializing_meets_once(monkeypatch):
    """
    The stage's serialization (in pieces, or morango's own where the pieces do not
    mirror morango), whose next run meets ``error`` before writing.
    """
    from morango.sync import operations as morango_operations

    from kolibri_sync_extras_plugin.piecewise import operations

    if supports_installed_morango():
        module, name = operations, "serialize_in_pieces"
    else:
        module, name = morango_operations, "_serialize_into_store"

    def install(error):
        serialize = getattr(module, name)
        calls = []

        def meets_error_once(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                raise error
            return serialize(*args, **kwargs)

        monkeypatch.setattr(module, name, meets_error_once)
        return calls

    return install


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            _unique_violation_on_postgresql(), id="postgresql-concurrent-insert"
        ),
        pytest.param(OperationalError("database is locked"), id="sqlite-busy"),
    ],
)
def test_pull_serializing__tiny_stage_meets_another_writer__goes_to_a_job(
    background_everything,
    async_client,
    server_sync_session,
    serializing_meets_once,
    error,
):
    calls = serializing_meets_once(error)

    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    assert len(calls) == 1
    assert response["transfer_stage_status"] == transfer_statuses.STARTED
    [job] = run_stage_jobs()
    assert job.state == "COMPLETED"
    assert async_client.get(transfer["id"])["transfer_stage_status"] == (
        transfer_statuses.COMPLETED
    )


def test_pull_serializing__tiny_stage_meets_a_real_error__errored_in_the_request(
    background_everything, async_client, server_sync_session, serializing_meets_once
):
    # on SQLite a unique violation is a real one, not another writer's
    serializing_meets_once(IntegrityError("UNIQUE constraint failed: morango_store.id"))

    with sync_options(INLINE_STAGE_RECORDS=GENEROUS):
        transfer, response = _pull_to_serializing(async_client, server_sync_session)

    assert response["transfer_stage_status"] == transfer_statuses.ERRORED
    assert no_stage_jobs_after()
