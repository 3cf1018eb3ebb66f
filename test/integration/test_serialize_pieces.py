"""
Serializing in short transactions ends exactly as morango's one-transaction
serialization leaves the store, in the background serializing stage and before
background deserializing; a run stopped between two pieces ends, run again, as
morango would end if it ran once after the stop.
"""

import json
import uuid
from types import SimpleNamespace

import mock
import pytest
from django.db import transaction
from kolibri.core.auth.models import Classroom
from kolibri.core.auth.models import FacilityUser
from kolibri.core.auth.models import LearnerGroup
from kolibri.core.auth.models import Membership
from kolibri.core.auth.sync_operations import KolibriSyncOperations
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.certificates import Filter
from morango.models.core import DatabaseMaxCounter
from morango.models.core import DeletedModels
from morango.models.core import HardDeletedModels
from morango.models.core import InstanceIDModel
from morango.models.core import Store
from morango.models.core import TransferSession
from morango.registry import syncable_models
from morango.sync.context import LocalSessionContext
from morango.sync.operations import _serialize_into_store

from kolibri_sync_extras_plugin.errors import UnsupportedMorango
from kolibri_sync_extras_plugin.job.context import RecordedRequest
from kolibri_sync_extras_plugin.piecewise import runner as piece_runner
from kolibri_sync_extras_plugin.piecewise import serialize
from kolibri_sync_extras_plugin.piecewise import stamping
from kolibri_sync_extras_plugin.piecewise import support
from kolibri_sync_extras_plugin.piecewise.operations import PiecewiseSerializeOperation
from kolibri_sync_extras_plugin.stages import stage_middleware

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import run_stage_jobs
from ..helpers.jobs import stage_jobs
from ..helpers.pieces import count_committed_pieces
from ..helpers.pieces import counter_rows
from ..helpers.pieces import only_where_pieces_mirror_morango
from ..helpers.pieces import without_own_counters

pytestmark = [
    pytest.mark.django_db(databases=ALL_DATABASES),
    only_where_pieces_mirror_morango,
]

PROFILE = "facilitydata"


def _current_instance():
    return InstanceIDModel.get_or_create_current_instance()[0]


def _dirty_app_rows():
    return sorted(
        (model.__name__, id_)
        for model in syncable_models.get_models(PROFILE)
        for id_ in model.syncing_objects.filter(_morango_dirty_bit=True).values_list(
            "id", flat=True
        )
    )


def _snapshot():
    """Everything a serialization writes: store, counters, dirty bits, deletion logs."""
    return {
        "store": list(Store.objects.order_by("id").values()),
        **counter_rows(),
        "instance_counter": _current_instance().counter,
        "dirty_app_rows": _dirty_app_rows(),
        "deleted_models": list(DeletedModels.objects.order_by("id").values()),
        "hard_deleted_models": list(HardDeletedModels.objects.order_by("id").values()),
    }


def _morango_result(sync_filter):
    """What morango's own serialization leaves, undone again afterwards."""
    with transaction.atomic():
        _serialize_into_store(PROFILE, filter=sync_filter)
        snapshot = _snapshot()
        transaction.set_rollback(True)
    return snapshot


@pytest.fixture
def changed_facility(facility):
    """
    The facility serialized once, then changed in every way serializing handles:
    learners renamed (one of them also received from a client and not yet
    deserialized, so its store record is dirty too; one whose store record was
    deleted before), new learners with memberships, a new classroom with a group
    inside it (a model with a foreign key to itself), a membership deleted and a
    learner deleted for good.

    :return: The facility's filter and the ids of the learners received, revived
        and deleted for good
    """
    sync_filter = Filter(facility.dataset_id)
    _serialize_into_store(PROFILE, filter=sync_filter)
    learners = list(FacilityUser.objects.filter(facility=facility).order_by("username"))
    for learner in learners[:5]:
        learner.full_name = "Changed {}".format(learner.username)
        learner.save()
    Store.objects.filter(id=learners[0].id).update(
        dirty_bit=True, last_transfer_session_id=uuid.uuid4().hex
    )
    Store.objects.filter(id=learners[1].id).update(deleted=True)

    classroom = Classroom.objects.create(name="Class B", parent=facility)
    group = LearnerGroup.objects.create(name="Group 1", parent=classroom)
    for number in range(6):
        user = FacilityUser.objects.create(
            username="newcomer{}".format(number), facility=facility
        )
        Membership.objects.create(user=user, collection=classroom)
        Membership.objects.create(user=user, collection=group)

    Membership.objects.filter(user=learners[6]).first().delete()
    hard_deleted = learners[7].id
    learners[7].delete(hard_delete=True)
    return SimpleNamespace(
        filter=sync_filter,
        received=learners[0].id,
        revived=learners[1].id,
        hard_deleted=hard_deleted,
    )


@pytest.fixture
def piece_count(monkeypatch):
    """How many serializing pieces were committed (a list, read later)."""
    return count_committed_pieces(monkeypatch, serialize._Run)


def test_serialize_pieces__end_as_morangos_serialization(
    changed_facility, pieces_of_three, piece_count
):
    expected = _morango_result(changed_facility.filter)
    counter_before = _current_instance().counter
    # the changes wait for serializing again
    assert len(_dirty_app_rows()) > 20

    serialize.serialize_in_pieces(PROFILE, changed_facility.filter)

    assert len(piece_count) > 10
    snapshot = _snapshot()
    # the same data as morango's; only this instance's counters differ, as each
    # piece takes one of its own
    assert snapshot != expected
    assert without_own_counters(snapshot) == without_own_counters(expected)
    _assert_counters_of_pieces(snapshot, counter_before, changed_facility.filter)


def _assert_counters_of_pieces(snapshot, counter_before, sync_filter):
    """
    Every record the run stamped carries a counter of its own pieces, above the
    counter before the run, with its record max counter; the last piece's counter
    is the instance's and is published for the filter.
    """
    instance = _current_instance().id
    stamped = {
        r["id"]: r["last_saved_counter"]
        for r in snapshot["store"]
        if r["last_saved_instance"] == instance
        and r["last_saved_counter"] > counter_before
    }
    assert stamped
    assert max(stamped.values()) == snapshot["instance_counter"]
    # more than one piece stamped, each under its own counter
    assert len(set(stamped.values())) > 1
    own_record_max_counters = {
        r["store_model_id"]: r["counter"]
        for r in snapshot["record_max_counters"]
        if r["instance_id"] == instance
    }
    assert all(own_record_max_counters[id_] == c for id_, c in stamped.items())
    assert _own_database_max_counter(sync_filter) == snapshot["instance_counter"]


def test_serialize_pieces__the_data_exercises_every_path_of_morangos(
    changed_facility,
):
    expected = _morango_result(changed_facility.filter)
    counter = expected["instance_counter"]
    store = {record["id"]: record for record in expected["store"]}
    group = LearnerGroup.objects.get(name="Group 1")

    # a dirty store record keeps what it received as conflicting data
    assert store[changed_facility.received]["conflicting_serialized_data"]
    assert not store[changed_facility.received]["dirty_bit"]
    assert store[changed_facility.received]["last_transfer_session_id"] is None
    # a new record of the model with a foreign key to itself names its parent
    assert store[group.id]["_self_ref_fk"] == group.parent_id
    # a soft deletion and a hard deletion
    assert any(
        r["deleted"] and r["last_saved_counter"] == counter for r in store.values()
    )
    hard_deleted = store[changed_facility.hard_deleted]
    assert hard_deleted["hard_deleted"] and hard_deleted["serialized"] == "{}"
    # an updated record that was deleted in the store is not any more
    assert not store[changed_facility.revived]["deleted"]
    assert expected["dirty_app_rows"] == []
    assert expected["deleted_models"] == expected["hard_deleted_models"] == []


def test_serialize_pieces__a_broken_copy__differs_from_morangos(
    changed_facility, pieces_of_three, monkeypatch
):
    expected = _morango_result(changed_facility.filter)
    # the comparison notices a run that leaves soft deletions unmarked
    monkeypatch.setattr(stamping, "mark_deleted", lambda ids, current: None)

    serialize.serialize_in_pieces(PROFILE, changed_facility.filter)

    snapshot = without_own_counters(_snapshot())
    expected = without_own_counters(expected)
    assert snapshot != expected
    assert [k for k in expected if snapshot[k] != expected[k]] == ["store"]


class _Stopped(Exception):
    """The job's process ending between two pieces."""


def _own_database_max_counter(sync_filter):
    [partition] = list(sync_filter)
    return DatabaseMaxCounter.objects.get(
        instance_id=_current_instance().id, partition=partition
    ).counter


def test_serialize_pieces__stopped_between_two_pieces__run_again__end_as_morango_would(
    changed_facility, pieces_of_three
):
    once = _morango_result(changed_facility.filter)
    dirty_before = len(_dirty_app_rows())
    counter_before = _current_instance().counter
    committed = []

    def stop_after_five(records, seconds):
        committed.append(records)
        if len(committed) == 5:
            raise _Stopped()

    with pytest.raises(_Stopped):
        serialize.serialize_in_pieces(
            PROFILE, changed_facility.filter, on_piece=stop_after_five
        )
    # five pieces stayed serialized, the rest is still dirty, and the database max
    # counter names the last piece's counter: the store holds all it stamped
    assert 0 < len(_dirty_app_rows()) < dirty_before
    assert _own_database_max_counter(changed_facility.filter) == (
        _current_instance().counter
    )
    assert _current_instance().counter == counter_before + 5
    after_the_stop = _morango_result(changed_facility.filter)

    serialize.serialize_in_pieces(PROFILE, changed_facility.filter)

    snapshot = _snapshot()
    # the same data as morango running once after the stop, or once instead
    assert without_own_counters(snapshot) == without_own_counters(after_the_stop)
    assert without_own_counters(snapshot) == without_own_counters(once)
    _assert_counters_of_pieces(snapshot, counter_before, changed_facility.filter)


def test_serialize_pieces__on_an_unsupported_morango__refuse(
    changed_facility, monkeypatch
):
    import morango

    monkeypatch.setattr(morango, "__version__", "0.8.16")
    dirty_before = _dirty_app_rows()

    with pytest.raises(UnsupportedMorango, match="morango's own"):
        serialize.serialize_in_pieces(PROFILE, changed_facility.filter)

    assert _dirty_app_rows() == dirty_before


def _transfer(pull):
    return TransferSession.objects.get(id=pull["id"])


def _morango_stage_result(pull):
    """
    What morango's serializing stage leaves, run with the context the job runs it
    with but outside a job, undone again afterwards.
    """
    with transaction.atomic(), mock.patch.object(
        support, "supports_installed_morango", return_value=False
    ):
        assert _stage_in_the_request(pull) == transfer_statuses.COMPLETED
        snapshot = _stage_snapshot(pull)
        transaction.set_rollback(True)
    return snapshot


def _stage_in_the_request(pull):
    """
    The serializing stage run with the context the job runs it with, for a client
    that cannot poll, in the request.
    """
    [job] = stage_jobs()
    context = LocalSessionContext(
        request=RecordedRequest(job.kwargs["request_data"]),
        transfer_session=_transfer(pull),
        capabilities=set(job.kwargs["capabilities"]) - {"ASYNC_OPERATIONS"},
    )
    return stage_middleware(transfer_stages.SERIALIZING)(context)


def _stage_snapshot(pull):
    transfer = _transfer(pull)
    return dict(
        _snapshot(), server_fsic=transfer.server_fsic, client_fsic=transfer.client_fsic
    )


def _own_counters_in(fsic, found):
    """The FSIC with this instance's counters left out, and put into ``found``."""
    instance = _current_instance().id
    if not isinstance(fsic, dict):
        return fsic
    kept = {}
    for key, value in fsic.items():
        if key == instance:
            found.append(value)
            value = None
        kept[key] = _own_counters_in(value, found)
    return kept


def _without_counters_of_stage(snapshot):
    own = []
    server_fsic = _own_counters_in(json.loads(snapshot["server_fsic"]), own)
    return dict(without_own_counters(snapshot), server_fsic=server_fsic), own


def _stage_snapshot_without_counters(pull):
    """
    The stage's snapshot with this instance's counters left out, and the server
    FSIC's counters for this instance, which the transfer records for the client.
    """
    return _without_counters_of_stage(_stage_snapshot(pull))


def test_serializing_stage__in_a_background_job__ends_as_morangos_stage(
    changed_facility, pull_at_serializing, pieces_of_three, piece_count
):
    expected = _morango_stage_result(pull_at_serializing)
    assert piece_count == []

    [job] = run_stage_jobs()

    assert job.state == "COMPLETED"
    assert len(piece_count) > 10
    expected, _ = _without_counters_of_stage(expected)
    snapshot, own = _stage_snapshot_without_counters(pull_at_serializing)
    assert snapshot == expected
    # the client is told the last counter the pieces published
    assert own and set(own) == {_current_instance().counter}


def test_serializing_stage__on_an_unsupported_morango__left_to_morango(
    changed_facility, pull_at_serializing, piece_count, monkeypatch
):
    import morango

    expected = _morango_stage_result(pull_at_serializing)
    monkeypatch.setattr(morango, "__version__", "0.8.16")

    [job] = run_stage_jobs()

    assert job.state == "COMPLETED"
    assert piece_count == []
    assert _stage_snapshot(pull_at_serializing) == expected


def test_serializing_stage__kolibris_own_operations__run_before_the_pieces(
    pull_at_serializing,
):
    context = LocalSessionContext(
        request=RecordedRequest({}), transfer_session=_transfer(pull_at_serializing)
    )
    operations = KolibriSyncOperations().get_operations(context)

    names = [type(o).__name__ for o in operations]
    assert "SingleFacilityUserChangeClearingOperation" in names
    assert names[-1] == PiecewiseSerializeOperation.__name__


def test_serialize_pieces__rows_changed_while_running__serialized_if_their_model_is_still_to_come(
    changed_facility, pieces_of_three
):
    classroom = Classroom.objects.get(name="Class A")
    learner = FacilityUser.objects.filter(_morango_dirty_bit=False).first()
    counter_before = _current_instance().counter
    pieces_done = []

    def change_after_the_first_piece(rows, seconds):
        pieces_done.append(rows)
        if len(pieces_done) == 1:
            # collections come before users in morango's order
            classroom.name = "Class A, renamed"
            classroom.save()
            learner.full_name = "Renamed meanwhile"
            learner.save()

    serialize.serialize_in_pieces(
        PROFILE, changed_facility.filter, on_piece=change_after_the_first_piece
    )

    # the classroom's model was done: it waits for the next serialization
    assert Classroom.objects.get(id=classroom.id)._morango_dirty_bit
    assert "renamed" not in Store.objects.get(id=classroom.id).serialized
    # the learner's model was still to come
    record = Store.objects.get(id=learner.id)
    assert not FacilityUser.objects.get(id=learner.id)._morango_dirty_bit
    assert json.loads(record.serialized)["full_name"] == "Renamed meanwhile"
    # under a counter of the run that is published for the filter
    assert counter_before < record.last_saved_counter
    assert record.last_saved_counter <= _own_database_max_counter(
        changed_facility.filter
    )


def test_serializing_stage__in_the_request__in_pieces_too__without_leaving_the_lock_free(
    changed_facility, pull_at_serializing, piece_count, monkeypatch
):
    # a client that cannot poll: every serialization on the server takes its
    # counters as the pieces do, and only a job pauses between pieces
    expected = _morango_stage_result(pull_at_serializing)
    pauses = []
    monkeypatch.setattr(piece_runner, "pause_after_piece", pauses.append)

    result = _stage_in_the_request(pull_at_serializing)

    assert result == transfer_statuses.COMPLETED
    assert piece_count and pauses == []
    expected, _ = _without_counters_of_stage(expected)
    snapshot, own = _stage_snapshot_without_counters(pull_at_serializing)
    assert snapshot == expected
    assert own and set(own) == {_current_instance().counter}
