"""
Deserializing a push in short transactions, so a background stage never holds the
database's write lock for long.

morango deserializes every dirty Store record under a sync filter in one
transaction. On SQLite, Kolibri begins each outermost transaction IMMEDIATE, so
every request that writes (a poll, a new transfer session, another client's
buffers) waits until that transaction ends: seconds, for a push of a few thousand
records. Here the same work is committed piece by piece:

- models in morango's own order (``syncable_models.get_models``, foreign-key
  dependency order), so a row is committed no earlier than the rows it references;
  records another push merges while the pieces run keep that order: a model's
  records are listed, and if records of an earlier model were merged since that
  model was listed (a push merges a learner with the learner's logs), the pass
  starts again from the first model before the listed ones are applied (see
  :meth:`_Run.deserialize_all`);
- within a model, the dirty Store records in batches sized so that each batch's
  transaction lasts about :data:`~.runner.TARGET_PIECE_SECONDS`;
- a model with a foreign key to itself (Kolibri's collections) level by level,
  parents before children, as morango does.

Each piece is morango's per-model step (``_deserialize_from_store`` in morango
|version|) applied to the batch, with morango's own helpers for deserializing and
validating foreign keys against the store; its rows are saved as morango saves
them, less the statements the piece's transaction shows to change nothing (see
:mod:`.saving`). Records that fail in one
piece are remembered for the rest of the run, as morango remembers them for the
rest of its transaction, so a record referencing them fails the same way.

**Local changes win, as in morango.** morango serializes the app's changes just
before it deserializes, in the same transaction, so a row changed here keeps the
local version (the pushed one kept as conflicting data) and a row deleted here
stays deleted. Pieces run while the server's users go on writing, so each piece
first serializes, in its own transaction, the local changes to the very records
it is about to apply (:func:`~.stamping.merge_local_changes`): a change made at
any moment while the pieces run ends as it would had it been made just before or
just after morango's one transaction.

**A conflict costs its piece.** A piece that meets another writer is rolled back
and tried again alone (see :class:`~.runner.PieceRun`); on PostgreSQL it takes morango's
partition locks before its transaction begins, so its snapshot is never older
than the stage it waited for.

A run that stops between two pieces has committed whole pieces only, each leaving
its records clean (or marked with their error). Run again, it starts from the
first model, finds only what is still dirty, and so neither loses a record nor
applies one twice; two runs at once (a job run twice) each read again inside
every piece which records are still dirty, so each record is applied by one. Because this follows morango's internals, it runs only on the
morango versions in :data:`~.support.SUPPORTED_MORANGO_VERSIONS`; the test suite compares
its result with morango's one-transaction stage on the same data.

.. |version| replace:: 0.8.15
"""

import logging
from collections import defaultdict

from django.core import exceptions
from django.db.models import Q
from morango.constants import transfer_stages
from morango.models.core import Store
from morango.registry import syncable_models

from . import stamping
from .dataset_lookups import datasets_remembered
from .runner import PieceRun
from .runner import batches
from .saving import save_deserialized_records
from .store_queries import under_filter
from .support import MorangoDirtyParent
from .support import MorangoMissingParent
from .support import _save_deserialized_record
from .support import _self_referential_fk
from .support import _validate_store_foreign_keys

logger = logging.getLogger(__name__)

__all__ = ["deserialize_in_pieces"]

# what morango's deserialization catches per record, and records as the error
_RECORD_ERRORS = (exceptions.ValidationError, exceptions.ObjectDoesNotExist, ValueError)
_ERROR_FIELDS = ["deserialization_error", "deserialization_exception"]

#: How many times one run goes back to the first model for records merged by
#: other pushes while it runs; past it, later arrivals wait for the next run.
MAX_PASS_RESTARTS = 20


def deserialize_in_pieces(profile, sync_filter, on_piece=None, pause=True):
    """
    Deserialize the dirty Store records under ``sync_filter`` as morango would, one
    short transaction at a time. Like morango's, the caller serializes first.

    Records another push merges while the pieces run are deserialized here,
    after the records they depend on, if they arrive before their model is listed
    (within :data:`MAX_PASS_RESTARTS`), and otherwise by that push's own stage,
    as with morango.

    :type profile: str
    :type sync_filter: morango.models.certificates.Filter
    :param on_piece: Called after each piece commits, with the number of records
        the piece worked on and the seconds its transaction took
    :type on_piece: callable|None
    :param pause: Whether to leave SQLite's write lock free after each piece (see
        :func:`~.runner.pause_after_piece`): in a background job, yes; in a request, whose
        client waits, no
    :return: The longest piece's transaction, in seconds
    :rtype: float
    """

    run = _Run(profile, sync_filter, on_piece, pause)
    run.deserialize_all()
    run.log_end("Deserialized")
    return run.longest


def _any_dirty(batch):
    """Whether a Store record of the batch still waits to be applied."""
    return Store.objects.filter(id__in=batch, dirty_bit=True).exists()


def _still_dirty(batch):
    """
    The batch's Store records that are still dirty, read inside the piece's
    transaction (another stage may have applied or replaced one since the batch
    was listed), in the batch's order, which is the order morango reads them in.
    """

    records = Store.objects.filter(id__in=batch, dirty_bit=True).in_bulk()
    return [records[id_] for id_ in batch if id_ in records]


class _Run(PieceRun):
    """
    One deserialization of a filter, piece by piece: what morango keeps for the
    length of its transaction (the foreign key cache, the records that failed, the
    records that reference deleted ones) is kept here for the length of the run.
    """

    stage = transfer_stages.DESERIALIZING

    def __init__(self, profile, sync_filter, on_piece, pause):
        super().__init__(profile, sync_filter, on_piece, pause)
        self.fk_cache = {}
        self.excluded = set()
        self.deleted = set()
        #: the Store records this run has listed to apply (applied, failed or
        #: found clean): morango's transaction looks at each record once
        self.listed = set()
        self.restarts = 0

    def _kept(self):
        return dict(self.fk_cache), set(self.excluded), set(self.deleted)

    def _restore(self, kept):
        self.fk_cache, self.excluded, self.deleted = kept

    def deserialize_all(self):
        """
        Every model in morango's order. Each model's records are listed first;
        then, if any were listed and records of an earlier model were merged
        after that model was listed, the pass starts again from the first model
        and the listing is dropped (it is made again on the way back). A push
        merges a record with the records it references in one transaction, so
        whatever a listing holds, the records it depends on are in the store by
        then: they are applied first, as in morango's one transaction, rather
        than the listed ones failing for want of them.
        """
        models = list(syncable_models.get_models(self.profile))
        index = 0
        while index < len(models):
            model = models[index]
            if _self_referential_fk(model):
                self._self_referential_model(model)
                index += 1
                continue
            listing = self._unlisted_dirty(model)
            # with nothing listed nothing can depend on a merge: the next model
            # that lists records looks for merges of every model before it
            if listing and index and self._merged_since_listed(models[:index]):
                self.restarts += 1
                index = 0
                continue
            self.listed.update(listing)
            self._apply(model, listing)
            index += 1

    def _unlisted_dirty(self, model):
        """
        The dirty Store records of ``model`` this run has not listed, read as
        morango reads them, so they come in the same order: a record may depend
        on one before it (a group membership on the classroom's).
        """
        dirty = self._store_records(model).filter(dirty_bit=True)
        return [r.id for r in dirty.iterator() if r.id not in self.listed]

    def _merged_since_listed(self, earlier_models):
        """Whether another push merged records of ``earlier_models`` since they were listed."""
        if self.restarts >= MAX_PASS_RESTARTS:
            return False
        condition = Q()
        for model in earlier_models:
            condition |= self._model_condition(model)
        dirty = Store.objects.filter(
            condition,
            under_filter(self.sync_filter, "partition"),
            profile=self.profile,
            dirty_bit=True,
        ).values_list("id", flat=True)
        return any(id_ not in self.listed for id_ in dirty.iterator())

    @staticmethod
    def _model_condition(model):
        """Which Store records morango deserializes with ``model``."""
        condition = Q(model_name=model.morango_model_name)
        for klass in model.morango_model_dependencies:
            condition |= Q(model_name=klass.morango_model_name)
        return condition

    def _store_records(self, model):
        """The Store records morango deserializes with ``model``, as it selects them."""
        return Store.objects.filter(
            self._model_condition(model),
            under_filter(self.sync_filter, "partition"),
            profile=self.profile,
        )

    def _apply(self, model, dirty):
        self.restart_sizing()
        for batch in batches(dirty, self._piece_size):
            if not _any_dirty(batch):
                # another run of the filter (on PostgreSQL, the stage jobs of
                # other pushes run at once) applied them since they were listed
                continue
            self.commit_piece(
                lambda: self._deserialize_batch(model, batch),
                len(batch),
                model.__name__,
            )

    @datasets_remembered()
    def _deserialize_batch(self, model, batch):
        """morango's step for a model without a foreign key to itself, on ``batch``."""

        if not _any_dirty(batch):
            # applied by another run while this piece waited for its locks
            return
        stamping.merge_local_changes(self.profile, self.sync_filter, batch)
        deferred_fks = defaultdict(list)
        app_models = []
        for store_model in _still_dirty(batch):
            try:
                app_model, model_deferred_fks = store_model._deserialize_store_model(
                    self.fk_cache, defer_fks=True, sync_filter=self.sync_filter
                )
                if app_model:
                    app_models.append((store_model, app_model))
                for fk_model, fk_refs in model_deferred_fks.items():
                    for fk_ref in fk_refs:
                        if fk_ref.to_pk in self.excluded:
                            raise exceptions.ValidationError(
                                "{} with id {} failed to deserialize".format(
                                    fk_model, fk_ref.to_pk
                                )
                            )
                    deferred_fks[fk_model].extend(fk_refs)
            except _RECORD_ERRORS as e:
                self.excluded.add(store_model.id)
                store_model.set_deserialization_error(e)
                store_model.save(update_fields=_ERROR_FIELDS)

        excluded_pks, deleted_pks = _validate_store_foreign_keys(
            model.__name__, deferred_fks
        )
        self.excluded.update(excluded_pks)
        self.deleted.update(deleted_pks)
        save_deserialized_records(
            [
                (store_model, app_model)
                for store_model, app_model in app_models
                if app_model.pk not in self.excluded
                and app_model.pk not in self.deleted
            ],
            model.__name__,
        )

    def _self_referential_model(self, model):
        """
        morango's step for a model with a foreign key to itself: records whose parent
        is clean (or who have none), level by level, then the ones left marked with
        why they could not be deserialized.
        """
        store_records = self._store_records(model)
        clean_parents = store_records.filter(dirty_bit=False).char_ids_list()
        children = store_records.filter(dirty_bit=True).filter(
            Q(_self_ref_fk__in=clean_parents) | Q(_self_ref_fk="")
        )
        level = [r.id for r in children.iterator() if r.id not in self.listed]
        self.restart_sizing()
        while level:
            self.listed.update(level)
            for batch in batches(level, self._piece_size):
                self.commit_piece(
                    lambda: self._deserialize_children(model, batch),
                    len(batch),
                    model.__name__,
                )
            clean_parents = store_records.filter(dirty_bit=False).char_ids_list()
            level = [
                r.id
                for r in store_records.filter(
                    dirty_bit=True, _self_ref_fk__in=clean_parents
                ).iterator()
                # what failed here was in a level, so is listed
                if r.id not in self.listed
            ]
        self.commit_piece(lambda: self._mark_orphans(store_records), 0, model.__name__)
        # the orphans are now marked with why, and done for this run; a record
        # left dirty without a reason was merged since the last level was listed
        marked = store_records.filter(dirty_bit=True).exclude(
            Q(deserialization_error__isnull=True) | Q(deserialization_error="")
        )
        self.listed.update(marked.values_list("id", flat=True))

    @datasets_remembered()
    def _deserialize_children(self, model, batch):
        stamping.merge_local_changes(self.profile, self.sync_filter, batch)
        for store_model in _still_dirty(batch):
            try:
                app_model, _ = store_model._deserialize_store_model(
                    self.fk_cache, sync_filter=self.sync_filter
                )
            except _RECORD_ERRORS as e:
                self.excluded.add(store_model.id)
                store_model.set_deserialization_error(e)
                store_model.save(update_fields=_ERROR_FIELDS)
                continue
            if app_model:
                excluded = []
                _save_deserialized_record(
                    store_model, app_model, model.__name__, excluded
                )
                self.excluded.update(excluded)
            else:
                store_model.dirty_bit = False
                store_model.unset_deserialization_error()
                store_model.save(update_fields=["dirty_bit"] + _ERROR_FIELDS)

    def _mark_orphans(self, store_records):
        dirty_parents = store_records.filter(dirty_bit=True).char_ids_list()
        store_records.filter(dirty_bit=True, _self_ref_fk__in=dirty_parents).exclude(
            id__in=self.excluded
        ).update(
            deserialization_error="Parent is dirty; could not deserialize.",
            deserialization_exception=MorangoDirtyParent.path(),
        )
        all_parents = store_records.char_ids_list()
        store_records.filter(dirty_bit=True).exclude(
            _self_ref_fk__in=all_parents
        ).exclude(id__in=self.excluded).update(
            deserialization_error="Parent does not exist in Store; could not deserialize.",
            deserialization_exception=MorangoMissingParent.path(),
        )
