"""
A push deserialized in short transactions ends exactly as morango's own
one-transaction stage leaves it, and a run stopped between two pieces finishes
the rest when it runs again.
"""

import json
import uuid
from collections import Counter

import mock
import pytest
from django.db import OperationalError
from django.db import connection
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from kolibri.core.auth.models import Collection
from kolibri.core.auth.models import FacilityUser
from kolibri.core.auth.models import Membership
from kolibri.core.auth.models import dataset_cache
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import DeletedModels
from morango.models.core import InstanceIDModel
from morango.models.core import Store
from morango.models.core import TransferSession
from morango.sync import operations as morango_operations
from morango.sync.context import LocalSessionContext
from morango.sync.operations import _deserialize_from_store
from morango.sync.operations import _serialize_into_store

from kolibri_sync_extras_plugin.job.context import BackgroundSessionContext
from kolibri_sync_extras_plugin.job.context import RecordedRequest
from kolibri_sync_extras_plugin.job.controller import run_stage_operations
from kolibri_sync_extras_plugin.piecewise import deserialize
from kolibri_sync_extras_plugin.piecewise import runner as piece_runner
from kolibri_sync_extras_plugin.piecewise import saving
from kolibri_sync_extras_plugin.piecewise import serialize
from kolibri_sync_extras_plugin.piecewise import support
from kolibri_sync_extras_plugin.piecewise.store_queries import dirty_store_records
from kolibri_sync_extras_plugin.stages import stage_middleware

from ..helpers.constants import ALL_DATABASES
from ..helpers.pieces import count_committed_pieces
from ..helpers.pieces import counter_rows
from ..helpers.pieces import only_where_pieces_mirror_morango
from ..helpers.pieces import without_own_counters
from .test_concurrent_writers import _Oracle

pytestmark = [
    pytest.mark.django_db(databases=ALL_DATABASES),
    only_where_pieces_mirror_morango,
]

_STORE_FIELDS = (
    "id",
    "serialized",
    "conflicting_serialized_data",
    "dirty_bit",
    "deleted",
    "hard_deleted",
    "deserialization_error",
    "deserialization_exception",
    "last_saved_instance",
    "last_saved_counter",
    "partition",
)


def _snapshot():
    """Everything a deserialization writes: app rows, store rows, counters."""
    return {
        "users": list(FacilityUser.objects.order_by("id").values()),
        "memberships": list(Membership.objects.order_by("id").values()),
        "collections": list(Collection.objects.order_by("id").values()),
        "store": list(Store.objects.order_by("id").values(*_STORE_FIELDS)),
        **counter_rows(),
        "instance_counter": InstanceIDModel.get_or_create_current_instance()[0].counter,
        "deleted_models": list(DeletedModels.objects.order_by("id").values()),
    }


def _broken_foreign_keys():
    """Rows whose foreign key points at no row, as SQLite checks them at commit."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA foreign_key_check")
        return cursor.fetchall()


def _clone(record, **changes):
    """A new dirty Store record made from ``record``, as a push would merge it."""
    serialized = json.loads(record.serialized)
    serialized.update(changes.pop("fields", {}))
    new_id = changes.pop("id", None) or uuid.uuid4().hex
    serialized["id"] = new_id
    values = dict(
        id=new_id,
        serialized=json.dumps(serialized),
        model_name=record.model_name,
        profile=record.profile,
        partition=record.partition,
        source_id=uuid.uuid4().hex,
        last_saved_instance=record.last_saved_instance,
        last_saved_counter=record.last_saved_counter,
        _self_ref_fk=record._self_ref_fk,
        dirty_bit=True,
    )
    values.update(changes)
    return Store.objects.create(**values)


@pytest.fixture
def varied_push(pushed_and_dequeued, facility):
    """
    The learners' renames of a dequeued push, and beside them what exercises every
    path of morango's deserialization: new users and memberships, a user whose
    facility does not exist and a membership that refers to it (a failure carried
    from one model to a later one), a membership to a user missing from the store,
    a new classroom with a group inside it (parents before children), a group whose
    parent is missing, a membership repeating an existing one under another id
    (the database refuses its row: a failure of the save itself), and a learner
    deleted on the client.
    """
    dataset = facility.dataset_id
    learner = Store.objects.filter(model_name="facilityuser", dirty_bit=True).first()
    # picked before the new users exist, which would otherwise be candidates too
    deleted = Store.objects.filter(model_name="facilityuser", dirty_bit=True).last()
    # not the deleted learner's: its repeat must fail for being a repeat alone
    membership = (
        Store.objects.filter(model_name="membership")
        .exclude(serialized__contains=deleted.id)
        .first()
    )
    classroom = Store.objects.filter(model_name="classroom").first()

    def new_user(username, **fields):
        user_id = uuid.uuid4().hex
        _clone(
            learner,
            id=user_id,
            partition="{}:user-ro:{}".format(dataset, user_id),
            fields=dict(username=username, full_name=username, **fields),
        )
        return user_id

    def new_membership(user_id, collection_id):
        _clone(
            membership,
            partition="{}:user-ro:{}".format(dataset, user_id),
            fields=dict(user_id=user_id, collection_id=collection_id),
        )

    missing_parent = uuid.uuid4().hex
    new_classroom = _clone(classroom, fields=dict(name="Class B"))
    group = _clone(
        classroom,
        model_name="learnergroup",
        _self_ref_fk=new_classroom.id,
        fields=dict(name="Group 1", kind="learnergroup", parent_id=new_classroom.id),
    )
    _clone(
        classroom,
        model_name="learnergroup",
        _self_ref_fk=missing_parent,
        fields=dict(name="Orphan group", kind="learnergroup", parent_id=missing_parent),
    )
    for number in range(7):
        user_id = new_user("newcomer{}".format(number))
        new_membership(user_id, new_classroom.id)
        new_membership(user_id, group.id)
    stray = new_user("stray", facility_id=uuid.uuid4().hex)
    new_membership(stray, classroom.id)
    new_membership(uuid.uuid4().hex, classroom.id)
    # the same learner in the same classroom under a new id: the row's insert fails
    pushed_and_dequeued["refused_membership"] = _clone(membership).id

    Store.objects.filter(id=deleted.id).update(deleted=True)
    return pushed_and_dequeued


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of at most three records, so even a small push takes many."""
    monkeypatch.setattr(piece_runner, "FIRST_PIECE_RECORDS", 2)
    monkeypatch.setattr(piece_runner, "MIN_PIECE_RECORDS", 1)
    monkeypatch.setattr(piece_runner, "MAX_PIECE_RECORDS", 3)


@pytest.fixture
def piece_count(monkeypatch):
    """How many pieces were committed (a list, so the test reads the count later)."""
    return count_committed_pieces(monkeypatch, deserialize._Run)


def _transfer(push):
    return TransferSession.objects.get(id=push["id"])


def _morango_stage_result(push):
    """
    What the deserializing stage leaves when morango runs it in one transaction (a
    client that cannot poll gets it inline), undone again afterwards.
    """
    with transaction.atomic(), mock.patch.object(
        support, "supports_installed_morango", return_value=False
    ):
        context = LocalSessionContext(
            request=RecordedRequest(), transfer_session=_transfer(push)
        )
        result = stage_middleware(transfer_stages.DESERIALIZING)(context)
        assert result == transfer_statuses.COMPLETED
        snapshot = _snapshot()
        transaction.set_rollback(True)
    return snapshot


def _background_stage(push):
    run_stage_operations(
        BackgroundSessionContext(_transfer(push)), transfer_stages.DESERIALIZING
    )


def test_pieces__end_as_morangos_one_transaction_stage(
    varied_push, small_pieces, piece_count
):
    expected = _morango_stage_result(varied_push)
    # the store is back as the push left it
    assert dirty_store_records([varied_push["filter"]]).count() > 30

    _background_stage(varied_push)

    assert len(piece_count) > 10
    assert _snapshot() == expected
    assert _broken_foreign_keys() == []


def _serialize_then(deserialize, push):
    transfer = _transfer(push)
    profile, sync_filter = transfer.sync_session.profile, transfer.get_filter()
    _serialize_into_store(profile, filter=sync_filter)
    deserialize(profile, sync_filter)


def test_pieces__apply_what_morangos_deserialization_applies(varied_push, small_pieces):
    # morango's own functions alone, without the stage's second look at failures
    with transaction.atomic():
        _serialize_then(
            lambda profile, sync_filter: _deserialize_from_store(
                profile, filter=sync_filter
            ),
            varied_push,
        )
        expected = _snapshot()
        transaction.set_rollback(True)

    _serialize_then(deserialize.deserialize_in_pieces, varied_push)

    assert _snapshot() == expected
    assert _broken_foreign_keys() == []


def test_pieces__record_the_failures_morango_records(
    varied_push, small_pieces, piece_count
):
    expected = _morango_stage_result(varied_push)
    expected_errors = {
        r["id"]: r["deserialization_error"] for r in expected["store"] if r["dirty_bit"]
    }
    # the push fails in each of the ways the fixture sets up
    for kind in (
        "UNIQUE constraint failed",
        "references non-existent facility instance",
        "references non-existent facility user instance",
        "failed to deserialize",
        "Parent does not exist in Store",
    ):
        assert any(kind in (error or "") for error in expected_errors.values()), kind

    _background_stage(varied_push)

    errors = dict(
        Store.objects.filter(dirty_bit=True).values_list("id", "deserialization_error")
    )
    assert errors == expected_errors


class _Stopped(Exception):
    """The job's process ending between two pieces."""


def test_pieces__stopped_between_two_pieces__finish_the_rest_when_run_again(
    varied_push, small_pieces
):
    expected = _morango_stage_result(varied_push)
    dirty_before = dirty_store_records([varied_push["filter"]]).count()
    committed = []

    def stop_after_five(records, seconds):
        committed.append(records)
        if len(committed) == 5:
            raise _Stopped()

    transfer = _transfer(varied_push)
    with pytest.raises(_Stopped):
        deserialize.deserialize_in_pieces(
            transfer.sync_session.profile,
            transfer.get_filter(),
            on_piece=stop_after_five,
        )
    # five pieces stayed applied, the rest still waits
    left = dirty_store_records([varied_push["filter"]]).count()
    assert 0 < left < dirty_before

    _background_stage(varied_push)

    assert _snapshot() == expected


def test_pieces__in_the_request__in_pieces_too__without_leaving_the_lock_free(
    varied_push, piece_count, monkeypatch
):
    # a client that cannot poll waits for the stage: no pause between pieces
    expected = _morango_stage_result(varied_push)
    pauses = []
    monkeypatch.setattr(piece_runner, "pause_after_piece", pauses.append)
    context = LocalSessionContext(
        request=RecordedRequest(), transfer_session=_transfer(varied_push)
    )

    stage_middleware(transfer_stages.DESERIALIZING)(context)

    assert piece_count and pauses == []
    assert without_own_counters(_snapshot()) == without_own_counters(expected)


def test_pieces__local_changes_waiting__serialized_in_pieces_first_as_morango_does(
    varied_push, small_pieces, monkeypatch
):
    # learners renamed on the server too, one of them one the push renames, and a
    # new learner: serializing first keeps the server's changes as morango does
    renamed_by_the_push = Store.objects.filter(
        model_name="facilityuser",
        dirty_bit=True,
        serialized__contains="Renamed learner",
        id__in=FacilityUser.objects.values_list("id", flat=True),
    )
    pushed = renamed_by_the_push.order_by("id").first()
    FacilityUser.objects.filter(id=pushed.id).update(full_name="Renamed here")
    for user in FacilityUser.objects.exclude(id=pushed.id).order_by("username")[:3]:
        user.full_name = "Renamed here too"
        user.save()
    FacilityUser.objects.create(
        username="local", facility=FacilityUser.objects.first().facility
    )
    FacilityUser.objects.filter(id=pushed.id).update(_morango_dirty_bit=True)
    expected = _morango_stage_result(varied_push)
    serialized = count_committed_pieces(monkeypatch, serialize._Run)

    _background_stage(varied_push)

    assert sum(serialized) >= 5
    # the same data as morango's; only this instance's counters differ, as each
    # piece that serializes takes one of its own
    assert without_own_counters(_snapshot()) == without_own_counters(expected)
    # the record both renamed keeps the server's rename, and the push's as conflicting
    record = Store.objects.get(id=pushed.id)
    assert json.loads(record.serialized)["full_name"] == "Renamed here"
    assert "Renamed learner" in record.conflicting_serialized_data


def test_pieces__a_piece_that_meets_another_writer__is_tried_again_alone(
    varied_push, small_pieces, piece_count, monkeypatch
):
    expected = _morango_stage_result(varied_push)
    real_save = saving._save
    saves_by_piece = Counter()
    failed = []

    def busy_once_after_two_saves(app_model, **how):
        real_save(app_model, **how)
        piece = len(piece_count)
        saves_by_piece[piece] += 1
        if piece > 0 and saves_by_piece[piece] == 2 and not failed:
            # a later piece has saved rows: its rollback must undo them
            failed.append(piece)
            raise OperationalError("database is locked")

    monkeypatch.setattr(saving, "_save", busy_once_after_two_saves)

    _background_stage(varied_push)

    # a piece saved two rows, met the lock, and was tried again alone
    [piece] = failed
    assert saves_by_piece[piece] > 2
    assert without_own_counters(_snapshot()) == without_own_counters(expected)
    assert _broken_foreign_keys() == []


def test_pieces__a_piece_that_keeps_failing__fails_the_run(
    varied_push, small_pieces, piece_count, monkeypatch
):
    monkeypatch.setattr(piece_runner, "RETRY_PAUSE_SECONDS", 0)
    attempts = []

    def always_locked(*args, **kwargs):
        attempts.append(args)
        raise OperationalError("database is locked")

    monkeypatch.setattr(saving, "_save", always_locked)

    with pytest.raises(OperationalError):
        deserialize.deserialize_in_pieces(
            _transfer(varied_push).sync_session.profile,
            _transfer(varied_push).get_filter(),
        )

    assert len(attempts) == piece_runner.PIECE_ATTEMPTS


def test_pieces__the_same_stage_job_run_twice__ends_as_one_run(
    varied_push, small_pieces, piece_count
):
    # a job run at least once: a second worker that read the transfer session as
    # still waiting runs the stage again, over what the first already applied.
    # The second run serializes first what the first run's Kolibri operations
    # changed (they may delete rows), so both sides are compared once the next
    # serialization has taken those changes in too.
    transfer = _transfer(varied_push)
    profile, sync_filter = transfer.sync_session.profile, transfer.get_filter()
    with transaction.atomic(), mock.patch.object(
        support, "supports_installed_morango", return_value=False
    ):
        context = LocalSessionContext(
            request=RecordedRequest(), transfer_session=transfer
        )
        assert (
            stage_middleware(transfer_stages.DESERIALIZING)(context)
            == transfer_statuses.COMPLETED
        )
        _serialize_into_store(profile, filter=sync_filter)
        expected = _snapshot()
        transaction.set_rollback(True)
    _background_stage(varied_push)
    pieces_of_the_first_run = len(piece_count)

    _background_stage(varied_push)
    _serialize_into_store(profile, filter=sync_filter)

    assert pieces_of_the_first_run > 10
    assert without_own_counters(_snapshot()) == without_own_counters(expected)
    assert _broken_foreign_keys() == []


def _merge_newcomers(dataset, count):
    """
    New learners and their memberships of a classroom, merged into the store in
    one go as another client's dequeuing merges its push.

    :return: The new learners' ids
    """
    learner = Store.objects.filter(model_name="facilityuser").first()
    membership = Store.objects.filter(model_name="membership").first()
    classroom = Collection.objects.get(kind="classroom")
    user_ids = []
    with transaction.atomic():
        for number in range(count):
            user_id = uuid.uuid4().hex
            _clone(
                learner,
                id=user_id,
                partition="{}:user-ro:{}".format(dataset, user_id),
                fields=dict(username="late{}".format(number), full_name="Late"),
            )
            _clone(
                membership,
                partition="{}:user-ro:{}".format(dataset, user_id),
                fields=dict(user_id=user_id, collection_id=classroom.id),
            )
            user_ids.append(user_id)
    return user_ids


def test_pieces__a_push_merged_after_its_users_model__users_applied_first_same_run(
    pushed_and_dequeued, facility, small_pieces
):
    """
    morango applies every dirty record in foreign-key order in one transaction.
    Pieces list each model's records as they reach it: learners merged with their
    memberships after the learners' model was listed must still be applied before
    the memberships, in the same run, and no membership marked failed.
    """
    merged = []

    def merge_once_learners_are_applied(records, seconds):
        learners_left = Store.objects.filter(model_name="facilityuser", dirty_bit=True)
        if not merged and not learners_left.exists():
            merged.extend(_merge_newcomers(facility.dataset_id, 4))

    transfer = _transfer(pushed_and_dequeued)
    deserialize.deserialize_in_pieces(
        transfer.sync_session.profile,
        transfer.get_filter(),
        on_piece=merge_once_learners_are_applied,
    )

    assert len(merged) == 4
    failed = Store.objects.exclude(deserialization_error__isnull=True).exclude(
        deserialization_error=""
    )
    assert list(failed.values_list("model_name", "deserialization_error")) == []
    assert not Store.objects.filter(dirty_bit=True).exists()
    assert FacilityUser.objects.filter(id__in=merged).count() == 4
    assert Membership.objects.filter(user_id__in=merged).count() == 4


def test_pieces__a_classroom_merged_after_the_collections__applied_before_members(
    pushed_and_dequeued, facility, small_pieces
):
    """The same for a model with a foreign key to itself, applied level by level."""
    merged = {}
    pushed_learners = Store.objects.filter(model_name="facilityuser", dirty_bit=True)
    learners_at_first = pushed_learners.count()

    def merge_once_collections_are_applied(records, seconds):
        # the learners come after the collections: once one is applied, the
        # collections' model is behind the run
        if merged or pushed_learners.count() == learners_at_first:
            return
        learner = FacilityUser.objects.filter(facility=facility).first()
        classroom = Store.objects.filter(model_name="classroom").first()
        membership = Store.objects.filter(model_name="membership").first()
        with transaction.atomic():
            new_classroom = _clone(classroom, fields=dict(name="Class C"))
            merged["membership"] = _clone(
                membership,
                partition="{}:user-ro:{}".format(facility.dataset_id, learner.id),
                fields=dict(user_id=learner.id, collection_id=new_classroom.id),
            ).id
        merged["classroom"] = new_classroom.id

    transfer = _transfer(pushed_and_dequeued)
    deserialize.deserialize_in_pieces(
        transfer.sync_session.profile,
        transfer.get_filter(),
        on_piece=merge_once_collections_are_applied,
    )

    assert merged
    assert not Store.objects.filter(id__in=merged.values(), dirty_bit=True).exists()
    assert Collection.objects.filter(id=merged["classroom"], name="Class C").exists()
    assert Membership.objects.filter(id=merged["membership"]).exists()


def test_pieces__another_run_applied_the_rest__no_piece_left_to_commit(
    pushed_and_dequeued, small_pieces
):
    """
    On PostgreSQL the deserializing jobs of several pushes run at once over the
    same filter: a run behind another one skips what the other applied, without
    a transaction or a lock per piece of it.
    """
    transfer = _transfer(pushed_and_dequeued)
    profile, sync_filter = transfer.sync_session.profile, transfer.get_filter()
    first_run_pieces = []

    def other_run_after_the_first_piece(records, seconds):
        if records:
            first_run_pieces.append(records)
        if len(first_run_pieces) == 1 and records:
            # the first run has listed the learners and applied a piece of them
            deserialize.deserialize_in_pieces(profile, sync_filter)

    deserialize.deserialize_in_pieces(
        profile, sync_filter, on_piece=other_run_after_the_first_piece
    )

    assert len(first_run_pieces) == 1
    assert not dirty_store_records([pushed_and_dequeued["filter"]]).exists()


def _deserialize_watching_lookups(push, after_piece=None):
    """
    Deserialize ``push`` in pieces and return, for each piece, the related rows
    whose facility dataset it queried (Kolibri remembers each answer it queries).
    ``after_piece`` is called with them as each piece commits.
    """
    transfer = _transfer(push)
    pieces = []
    with mock.patch.object(dataset_cache, "set", wraps=dataset_cache.set) as queried:

        def on_piece(records, seconds):
            pieces.append([call.args[0] for call in queried.call_args_list])
            queried.reset_mock()
            if after_piece is not None:
                after_piece(pieces[-1])

        deserialize.deserialize_in_pieces(
            transfer.sync_session.profile, transfer.get_filter(), on_piece=on_piece
        )
    return [piece for piece in pieces if piece]


def test_pieces__query_each_related_rows_dataset_once_a_piece(varied_push):
    expected = _morango_stage_result(varied_push)

    pieces = _deserialize_watching_lookups(varied_push)

    # the newcomers' memberships share a classroom and the users a facility: one
    # query each in a piece, where Kolibri's server otherwise makes one a record
    assert any(len(piece) > 1 for piece in pieces)
    assert all(len(piece) == len(set(piece)) for piece in pieces)
    assert without_own_counters(_snapshot()) == without_own_counters(expected)


def _store_cleanings(queries):
    """The statements that mark Store records clean, as morango's save of one does."""
    return [
        q["sql"]
        for q in queries
        if q["sql"].startswith('UPDATE "morango_store" SET "dirty_bit" = ')
        and '"deserialization_error" = NULL' in q["sql"]
    ]


def test_pieces__new_rows_inserted_without_an_update__store_marked_clean_once_a_piece(
    varied_push, small_pieces, piece_count
):
    expected = _morango_stage_result(varied_push)
    memberships_before = set(Membership.objects.values_list("id", flat=True))
    transfer = _transfer(varied_push)
    profile, sync_filter = transfer.sync_session.profile, transfer.get_filter()
    _serialize_into_store(profile, filter=sync_filter)

    with CaptureQueriesContext(connection) as queries:
        deserialize.deserialize_in_pieces(profile, sync_filter)

    new = set(Membership.objects.values_list("id", flat=True)) - memberships_before
    assert len(new) >= 14
    membership_updates = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('UPDATE "{}"'.format(Membership._meta.db_table))
    ]
    assert not [sql for sql in membership_updates if any(id_ in sql for id_ in new)]
    assert 0 < len(_store_cleanings(queries)) <= len(piece_count)
    assert without_own_counters(_snapshot()) == without_own_counters(expected)


def test_pieces__a_learner_deleted_between_two_pieces__their_later_memberships_fail(
    varied_push, small_pieces
):
    """
    The server's own users go on writing between pieces: a learner deleted after
    a piece looked their dataset up fails the memberships still waiting for them,
    none applied to a user that no longer exists.
    """
    users_table = "_{}_dataset".format(FacilityUser._meta.db_table)
    deleted = []

    def delete_a_learner_with_memberships_left(piece_lookups):
        for key in piece_lookups:
            user_id = key.split("_")[0]
            if (
                not deleted
                and key.endswith(users_table)
                and _memberships_of(user_id, varied_push)
            ):
                deleted.append(user_id)
                FacilityUser.objects.filter(id=user_id).delete()

    _deserialize_watching_lookups(varied_push, delete_a_learner_with_memberships_left)

    assert deleted
    waiting = _memberships_of(deleted[0], varied_push)
    assert waiting and all(
        "does not exist" in record.deserialization_error for record in waiting
    )
    assert not Membership.objects.filter(user_id=deleted[0]).exists()
    assert _broken_foreign_keys() == []


def _memberships_of(user_id, push):
    """
    The user's memberships still waiting in the store, but the one the database
    refuses whether or not its learner is there.
    """
    return list(
        Store.objects.filter(
            model_name="membership",
            # the user's own field: the fixture's memberships carry another
            # learner's id in their partition
            serialized__contains='"user_id": "{}"'.format(user_id),
            dirty_bit=True,
        ).exclude(id=push["refused_membership"])
    )


class _CounterThenAnotherStage:
    """
    morango's ``InstanceIDModel`` as morango's operations see it, except that right
    after a counter is taken, before the transaction that stamps with it begins,
    another stage serializes in pieces: with threads, any piece that gets the
    write lock first.
    """

    def __init__(self, between):
        self._between = between
        self.counters = []

    def __getattr__(self, name):
        return getattr(InstanceIDModel, name)

    def get_current_instance_and_increment_counter(self):
        current = InstanceIDModel.get_current_instance_and_increment_counter()
        self.counters.append(current.counter)
        self._between()
        return current


def test_pieces__a_push_another_run_applied__stamps_nothing_below_a_published_counter(
    pushed_and_dequeued, monkeypatch
):
    """
    Every push of a class set but the first finds its records applied by the
    first one's run. Its stage applies nothing, so it overwrites no local
    change, and it stamps nothing below a counter already published, whatever
    other stage serializes meanwhile: a client that pulled meanwhile gets every
    change on its next pull. (morango's receiver would serialize first with a
    counter taken before its transaction begins.)
    """
    transfer = _transfer(pushed_and_dequeued)
    profile, sync_filter = transfer.sync_session.profile, transfer.get_filter()
    # the first push's run applied these records too
    deserialize.deserialize_in_pieces(profile, sync_filter)
    assert not dirty_store_records([pushed_and_dequeued["filter"]]).exists()
    edited_first, edited_next = FacilityUser.objects.order_by("id")[:2]
    oracle = _Oracle()

    def a_pull_serializing_then_an_edit():
        _rename(edited_first, "Edited before a pull's serializing")
        serialize.serialize_in_pieces(profile, sync_filter)
        oracle.check("a pull's serializing")
        _rename(edited_next, "Edited after it")

    monkeypatch.setattr(
        morango_operations,
        "InstanceIDModel",
        _CounterThenAnotherStage(a_pull_serializing_then_an_edit),
    )
    # the stage's own serializing takes a counter
    _rename(edited_first, "Edited before the stage")

    _background_stage(pushed_and_dequeued)

    oracle.check("the push's stage")
    assert oracle.violations == []
    assert FacilityUser.objects.get(id=edited_first.id).full_name == (
        "Edited before the stage"
    )
    # the next stage that sends data serializes the edit above every counter
    serialize.serialize_in_pieces(profile, sync_filter)
    oracle.check("the next pull's serializing")
    assert oracle.violations == []
    assert "Edited before the stage" in Store.objects.get(id=edited_first.id).serialized


def _rename(user, full_name):
    user.full_name = full_name
    user.save()
