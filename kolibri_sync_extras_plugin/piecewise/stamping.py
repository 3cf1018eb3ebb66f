"""
Local changes written into morango's store under a counter that only moves
forward, one piece at a time.

morango's store says what this instance saved with its instance counter: every
record it serializes carries the counter (``last_saved_counter``), and the
database max counter of a partition says "everything this instance saved under
this partition up to this counter is in the store". A client that pulled up to a
counter never asks for records at or below it again. morango keeps that true by
serializing a whole filter in one transaction under one counter. A run in pieces
keeps it true piece by piece:

- a piece that stamps anything takes a counter of its own, inside its own
  transaction (:func:`take_counter`), so it is above every counter another piece
  or stage published before;
- in the same transaction, it publishes that counter for the filter's partitions
  (:func:`publish_counter`), never lowering one already published: once the
  piece commits, the store holds everything stamped up to it.

The per-record work is morango's (``_serialize_into_store`` in morango
|version|): :func:`serialize_rows` for changed rows, :func:`mark_deleted` and
:func:`mark_hard_deleted` for deletions. :func:`merge_local_changes` applies them
to the records a deserializing piece is about to apply, so a local change made
while a push is deserialized wins as it does in morango.

.. |version| replace:: 0.8.15
"""

import json
from collections import defaultdict

from django.core.serializers.json import DjangoJSONEncoder
from morango.models.core import DatabaseMaxCounter
from morango.models.core import DeletedModels
from morango.models.core import HardDeletedModels
from morango.models.core import InstanceIDModel
from morango.models.core import RecordMaxCounter
from morango.models.core import Store
from morango.registry import syncable_models

from .store_queries import under_filter
from .support import _self_referential_fk

__all__ = [
    "CounterForPiece",
    "apply_deletions",
    "changed_rows_of",
    "mark_deleted",
    "mark_hard_deleted",
    "merge_local_changes",
    "publish_counter",
    "serialize_rows",
    "take_counter",
]


def changed_rows_of(model, sync_filter):
    """The model's rows changed since they were serialized, as morango selects them."""
    # morango before 0.8 (Kolibri 0.16 to 0.18) serializes through ``objects``
    manager = getattr(model, "syncing_objects", model.objects)
    queryset = manager.filter(_morango_dirty_bit=True)
    if sync_filter:
        queryset = queryset.filter(under_filter(sync_filter, "_morango_partition"))
    return queryset


def take_counter():
    """
    Increment this instance's counter and read it, inside the caller's
    transaction: no piece or stage that publishes later can hold a lower one
    (SQLite lets one writer in at a time; PostgreSQL locks the instance's row
    until the transaction ends).

    :rtype: morango.models.core.InstanceIDModel
    """
    return InstanceIDModel.get_current_instance_and_increment_counter()


def publish_counter(current, sync_filter):
    """
    Record that the store holds everything this instance saved under the
    filter's partitions up to ``current.counter``: raise each database max counter
    to it, and never lower one. (A stage of morango's own takes its counter before
    its transaction begins, so it may publish after a piece with a higher one.)
    """
    for partition in sync_filter or [""]:
        raised = DatabaseMaxCounter.objects.filter(
            instance_id=current.id, partition=partition, counter__lt=current.counter
        ).update(counter=current.counter)
        if not raised:
            DatabaseMaxCounter.objects.get_or_create(
                instance_id=current.id,
                partition=partition,
                defaults={"counter": current.counter},
            )


def serialize_rows(model, rows, counter):
    """
    morango's per-model serializing step for ``rows`` (changed app rows of
    ``model``), stamped with the piece's counter: Store records updated (a dirty
    one keeps what it received as conflicting data) or created, record max
    counters set, and the dirty bit cleared for exactly these rows.

    :type rows: django.db.models.QuerySet
    :param counter: Gives the piece's counter; asked only if there are rows
    :type counter: CounterForPiece
    :return: How many rows were serialized
    :rtype: int
    """
    ids = list(rows.values_list("id", flat=True))
    if not ids:
        return 0
    current = counter()
    self_ref_fk = _self_referential_fk(model)
    store_records = Store.objects.in_bulk(id_list=ids)
    new_store_records = []
    new_record_max_counters = []
    for app_model in rows.filter(id__in=ids):
        store_model = store_records.get(app_model.id)
        if store_model is None:
            values = dict(
                id=app_model.id,
                serialized=DjangoJSONEncoder().encode(app_model.serialize()),
                last_saved_instance=current.id,
                last_saved_counter=current.counter,
                model_name=app_model.morango_model_name,
                profile=app_model.morango_profile,
                partition=app_model._morango_partition,
                source_id=app_model._morango_source_id,
            )
            if self_ref_fk:
                values["_self_ref_fk"] = getattr(app_model, self_ref_fk) or ""
            new_store_records.append(Store(**values))
            new_record_max_counters.append(
                RecordMaxCounter(
                    store_model_id=app_model.id,
                    instance_id=current.id,
                    counter=current.counter,
                )
            )
            continue
        if store_model.dirty_bit:
            store_model.conflicting_serialized_data = (
                store_model.serialized + "\n" + store_model.conflicting_serialized_data
            )
            store_model.dirty_bit = False
        serialized = json.loads(store_model.serialized)
        serialized.update(app_model.serialize())
        store_model.serialized = DjangoJSONEncoder().encode(serialized)
        RecordMaxCounter.objects.update_or_create(
            defaults={"counter": current.counter},
            instance_id=current.id,
            store_model_id=store_model.id,
        )
        store_model.last_saved_instance = current.id
        store_model.last_saved_counter = current.counter
        store_model.deleted = False
        store_model.hard_deleted = False
        store_model.last_transfer_session_id = None
        store_model.save()
    Store.objects.bulk_create(new_store_records)
    RecordMaxCounter.objects.bulk_create(new_record_max_counters)
    rows.model.syncing_objects.filter(id__in=ids).update(update_dirty_bit_to=False)
    return len(ids)


def mark_deleted(ids, current):
    """morango's handling of soft-deleted rows, for ``ids``, stamped with ``current``."""
    store_records = Store.objects.filter(id__in=ids)
    store_records.update(
        dirty_bit=False,
        deleted=True,
        last_saved_instance=current.id,
        last_saved_counter=current.counter,
    )
    RecordMaxCounter.objects.filter(
        instance_id=current.id, store_model_id__in=ids
    ).update(counter=current.counter)
    missing = store_records.exclude(recordmaxcounter__instance_id=current.id)
    RecordMaxCounter.objects.bulk_create(
        [
            RecordMaxCounter(
                store_model_id=id_, instance_id=current.id, counter=current.counter
            )
            for id_ in missing.values_list("id", flat=True)
        ]
    )


def mark_hard_deleted(ids):
    """morango's handling of hard-deleted rows, for ``ids`` (it stamps no counter)."""
    Store.objects.filter(id__in=ids).update(
        hard_deleted=True, serialized="{}", conflicting_serialized_data=""
    )


def apply_deletions(profile, ids, counter):
    """
    Apply the deletions logged for ``ids``, soft and hard together (a pull between
    the two would see a deletion whose data is not yet cleared, and never see it
    cleared: clearing stamps no counter), and clear their log rows.

    :param counter: Called for the counter, only if a soft deletion is
        logged
    :return: How many logged deletions were applied
    :rtype: int
    """
    soft = list(
        DeletedModels.objects.filter(profile=profile, id__in=ids).values_list(
            "id", flat=True
        )
    )
    hard = list(
        HardDeletedModels.objects.filter(profile=profile, id__in=ids).values_list(
            "id", flat=True
        )
    )
    if soft:
        mark_deleted(soft, counter())
        DeletedModels.objects.filter(profile=profile, id__in=soft).delete()
    if hard:
        mark_hard_deleted(hard)
        HardDeletedModels.objects.filter(profile=profile, id__in=hard).delete()
    return len(set(soft) | set(hard))


class CounterForPiece:
    """
    The counter of one piece, taken the first time the piece stamps a record (a
    piece with nothing to stamp spends none) and published when the piece ends.
    """

    def __init__(self, sync_filter):
        self.sync_filter = sync_filter
        self.current = None

    def __call__(self):
        if self.current is None:
            self.current = take_counter()
        return self.current

    def publish(self):
        """:return: Whether the piece took a counter and published it"""
        if self.current is None:
            return False
        publish_counter(self.current, self.sync_filter)
        return True


def merge_local_changes(profile, sync_filter, store_ids):
    """
    Before a deserializing piece applies the dirty Store records ``store_ids``,
    serialize the local changes to the same records, in the piece's transaction:
    app rows changed under the filter, and logged deletions. A record changed both
    here and by the push then keeps the local version, with the pushed one as
    conflicting data, and is no longer dirty, exactly as morango's serializing
    before deserializing leaves it.

    :return: Whether anything was stamped (and the counter published)
    :rtype: bool
    """
    counter = CounterForPiece(sync_filter)
    by_model = defaultdict(list)
    for id_, model_name in Store.objects.filter(
        id__in=store_ids, dirty_bit=True
    ).values_list("id", "model_name"):
        by_model[model_name].append(id_)
    for model_name, ids in by_model.items():
        model = syncable_models.get_model(profile, model_name)
        serialize_rows(
            model, changed_rows_of(model, sync_filter).filter(id__in=ids), counter
        )
    apply_deletions(profile, list(store_ids), counter)
    return counter.publish()
