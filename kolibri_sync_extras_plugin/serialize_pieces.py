"""
Serializing in short transactions, so a background stage never holds the
database's write lock for long.

morango serializes (copies the rows the app changed into its store, stamped with
this instance's counter) in one transaction, which on SQLite keeps every request
that writes waiting, as deserializing does (see :mod:`.pieces`). Here the same work
is committed piece by piece, each piece in a transaction begun as morango begins
its own (on PostgreSQL, it locks the filter's partitions):

- the instance's counter is incremented once for the whole run, before the first
  piece, as morango increments it once before its transaction;
- models in morango's order; within a model, the dirty rows under the filter in
  batches sized so that each batch's transaction lasts about
  :data:`~.pieces.TARGET_PIECE_SECONDS`. Each batch is morango's per-model step
  (``_serialize_into_store`` in morango |version|) applied to it: existing Store
  records updated (a dirty one keeps its old data as conflicting), new ones
  created, the record max counters set, and the dirty bit cleared for exactly the
  rows of the batch;
- the app's soft deletions, then its hard deletions, in batches the same way;
- last, the database max counters of the filter, in a piece of their own.

A row the app changes while the pieces run is serialized here if its model is
still to come, and otherwise stays dirty for the next serialization, as a row
changed just after morango's transaction would.

**A run stopped between two pieces** has committed whole pieces only: the rows
they serialized are clean and carry the run's counter, the rest are still dirty,
and the database max counters were not touched (they are written last). Nothing
claims more than the store holds: another instance reads this one's counter for
the filter from the database max counter, which still names the previous run, so
a pull that queues records meanwhile may send some of this run's records early,
and the next pull sends them all again (merging a record twice changes nothing).
Run again, it increments the counter once more and serializes what is still
dirty with it. That ends exactly as morango would if it ran once after the stop
(the stop had already spent one counter); compared with morango running once
instead of the stopped run and the rerun, the counter is one higher, the records
of the stopped run's pieces carry the counter before it, and the database max
counters name the higher one. That difference is harmless for sync: every record
this instance saved still carries a counter no higher than its database max
counter for the filter, which is all a filter-specific instance counter claims.

Because this follows morango's internals, it runs only where
:func:`~.pieces.supports_installed_morango` says so; the test suite compares its
result with morango's on the same data.

.. |version| replace:: 0.8.15
"""

import json
import logging

import morango
from django.core.serializers.json import DjangoJSONEncoder
from morango.constants import transfer_stages
from morango.models.core import DatabaseMaxCounter
from morango.models.core import DeletedModels
from morango.models.core import HardDeletedModels
from morango.models.core import InstanceIDModel
from morango.models.core import RecordMaxCounter
from morango.models.core import Store
from morango.registry import syncable_models

from . import pieces
from .errors import UnsupportedMorango
from .store import under_filter

try:
    from morango.sync.operations import _self_referential_fk
except ImportError:  # older morango: supports_installed_morango() says no
    pass

logger = logging.getLogger(__name__)

__all__ = ["changed_rows", "serialize_in_pieces"]


def _changed(model, sync_filter):
    """The model's rows changed since they were serialized, as morango selects them."""
    # morango before 0.8 (Kolibri 0.16 to 0.18) serializes through ``objects``
    manager = getattr(model, "syncing_objects", model.objects)
    queryset = manager.filter(_morango_dirty_bit=True)
    if sync_filter:
        queryset = queryset.filter(under_filter(sync_filter, "_morango_partition"))
    return queryset


def changed_rows(profile, sync_filter):
    """
    :return: How many app rows under ``sync_filter`` serializing would write into
        the store now
    :rtype: int
    """
    return sum(
        _changed(model, sync_filter).count()
        for model in syncable_models.get_models(profile)
    )


def serialize_in_pieces(profile, sync_filter, on_piece=None):
    """
    Serialize the app's dirty rows under ``sync_filter`` into morango's store as
    morango would, one short transaction at a time.

    After each piece of rows it sends :data:`~.pieces.PIECE_COMMITTED` with the
    ``serializing`` stage as sender (the pieces of deletions and counters send 0
    rows).

    :type profile: str
    :param sync_filter: The filter whose partitions to serialize; ``None`` for all,
        as morango allows
    :type sync_filter: morango.models.certificates.Filter|None
    :param on_piece: Called after each piece commits, with the number of rows the
        piece worked on and the seconds its transaction took
    :type on_piece: callable|None
    :return: The longest piece's transaction, in seconds
    :rtype: float
    :raises UnsupportedMorango: on a morango version whose serialization this does
        not mirror; there, let morango serialize in its own one transaction
    """
    if not pieces.supports_installed_morango():
        raise UnsupportedMorango(
            "serializing in pieces mirrors morango {} only, and morango {} is "
            "installed: serialize with morango's own _serialize_into_store".format(
                ", ".join(sorted(pieces.SUPPORTED_MORANGO_VERSIONS)),
                morango.__version__,
            )
        )
    # one counter for the whole run, read and incremented in one go, as morango does
    current = InstanceIDModel.get_current_instance_and_increment_counter()
    run = _Run(profile, sync_filter, current, on_piece)
    for model in syncable_models.get_models(profile):
        run.model(model)
    run.deletions(DeletedModels, run.mark_deleted)
    run.deletions(HardDeletedModels, run.mark_hard_deleted)
    run.commit_piece(run.database_max_counters, 0, "DatabaseMaxCounter", counted=0)
    logger.debug(
        "Serialized %d rows in %d pieces; the longest held the database %.3fs",
        run.records,
        run.pieces,
        run.longest,
    )
    return run.longest


class _Run(pieces.PieceRun):
    """One serialization of a filter, piece by piece, under one counter."""

    stage = transfer_stages.SERIALIZING

    def __init__(self, profile, sync_filter, current, on_piece):
        super(_Run, self).__init__(profile, sync_filter, on_piece)
        self.current = current

    def _dirty_rows(self, model):
        return _changed(model, self.sync_filter)

    def model(self, model):
        dirty = list(self._dirty_rows(model).values_list("id", flat=True))
        self._size = pieces.FIRST_PIECE_RECORDS
        self_ref_fk = _self_referential_fk(model)
        for batch in pieces.batches(dirty, self._piece_size):
            self.commit_piece(
                lambda: self._serialize_batch(model, batch, self_ref_fk),
                len(batch),
                model.__name__,
            )

    def _serialize_batch(self, model, batch, self_ref_fk):
        """
        morango's per-model step, on the rows of ``batch`` that are still dirty
        (read again inside the piece's transaction, so a row deleted or serialized
        since the batch was listed is left alone).
        """
        current = self.current
        rows = self._dirty_rows(model).filter(id__in=batch)
        store_records = Store.objects.in_bulk(id_list=list(batch))
        new_store_records = []
        new_record_max_counters = []
        for app_model in rows:
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
            # a store record still dirty (received, not yet deserialized) keeps
            # what it received as conflicting data
            if store_model.dirty_bit:
                store_model.conflicting_serialized_data = (
                    store_model.serialized
                    + "\n"
                    + store_model.conflicting_serialized_data
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
        rows.update(update_dirty_bit_to=False)

    def deletions(self, log_model, mark):
        """
        Apply the deletions logged in ``log_model`` for the profile, in batches: each
        batch marks its store records with ``mark`` and clears its log rows.
        """
        logged = list(
            log_model.objects.filter(profile=self.profile).values_list("id", flat=True)
        )
        self._size = pieces.FIRST_PIECE_RECORDS

        def apply(batch):
            ids = list(
                log_model.objects.filter(
                    profile=self.profile, id__in=batch
                ).values_list("id", flat=True)
            )
            mark(ids)
            log_model.objects.filter(profile=self.profile, id__in=ids).delete()

        for batch in pieces.batches(logged, self._piece_size):
            self.commit_piece(
                lambda: apply(batch), len(batch), log_model.__name__, counted=0
            )

    def mark_deleted(self, ids):
        """morango's handling of soft-deleted rows, for ``ids``."""

        current = self.current
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
        missing = store_records.exclude(
            recordmaxcounter__instance_id=current.id
        ).values_list("id", flat=True)
        RecordMaxCounter.objects.bulk_create(
            [
                RecordMaxCounter(
                    store_model_id=id_,
                    instance_id=current.id,
                    counter=current.counter,
                )
                for id_ in missing
            ]
        )

    def mark_hard_deleted(self, ids):
        """morango's handling of hard-deleted rows, for ``ids``."""

        Store.objects.filter(id__in=ids).update(
            hard_deleted=True, serialized="{}", conflicting_serialized_data=""
        )

    def database_max_counters(self):
        """This instance has everything it saved up to the run's counter."""

        current = self.current
        for partition in self.sync_filter or [""]:
            DatabaseMaxCounter.objects.update_or_create(
                instance_id=current.id,
                partition=partition,
                defaults={"counter": current.counter},
            )
