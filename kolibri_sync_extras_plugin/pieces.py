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
- within a model, the dirty Store records in batches sized so that each batch's
  transaction lasts about :data:`TARGET_PIECE_SECONDS`;
- a model with a foreign key to itself (Kolibri's collections) level by level,
  parents before children, as morango does.

Each piece is morango's per-model step (``_deserialize_from_store`` in morango
|version|) applied to the batch, with morango's own helpers for deserializing,
validating foreign keys against the store and saving. Records that fail in one
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
and tried again alone (see :class:`PieceRun`); on PostgreSQL it takes morango's
partition locks before its transaction begins, so its snapshot is never older
than the stage it waited for.

A run that stops between two pieces has committed whole pieces only, each leaving
its records clean (or marked with their error). Run again, it starts from the
first model, finds only what is still dirty, and so neither loses a record nor
applies one twice; two runs at once (a job run twice) each read again inside
every piece which records are still dirty, so each record is applied by one. Because this follows morango's internals, it runs only on the
morango versions in :data:`SUPPORTED_MORANGO_VERSIONS`; the test suite compares
its result with morango's one-transaction stage on the same data.

.. |version| replace:: 0.8.15
"""

import binascii
import contextlib
import logging
import time
from collections import defaultdict

import morango
from django.core import exceptions
from django.db import DatabaseError
from django.db import connection
from django.db import transaction
from django.db.models import Q
from django.dispatch import Signal
from morango.constants import transfer_stages
from morango.models.core import Store
from morango.registry import syncable_models

from . import stamping
from .store import under_filter

try:
    # the internals this module follows; older morango (Kolibri before 0.19) lacks
    # some, and is left to its own one-transaction stage
    from morango.errors import MorangoDirtyParent
    from morango.errors import MorangoMissingParent
    from morango.sync.operations import _begin_transaction
    from morango.sync.operations import _save_deserialized_record
    from morango.sync.operations import _self_referential_fk
    from morango.sync.operations import _validate_store_foreign_keys
except ImportError:
    _INTERNALS_FOUND = False
else:
    _INTERNALS_FOUND = True

logger = logging.getLogger(__name__)

__all__ = [
    "PIECE_COMMITTED",
    "SUPPORTED_MORANGO_VERSIONS",
    "TARGET_PIECE_SECONDS",
    "batches",
    "deserialize_in_pieces",
    "next_piece_size",
    "pause_after_piece",
    "supports_installed_morango",
]

#: Sent after each piece commits, on the thread that ran it, with the stage whose
#: work it did as sender (``deserializing`` here, ``serializing`` from
#: :mod:`.serialize_pieces`), ``records`` (how many records the piece worked on)
#: and ``seconds`` (how long its transaction took): the moment to report
#: progress, with no database transaction open.
PIECE_COMMITTED = Signal()

#: The morango versions whose ``_deserialize_from_store`` this module mirrors.
SUPPORTED_MORANGO_VERSIONS = frozenset(("0.8.15",))

#: How long one piece's transaction should hold the write lock, in seconds.
TARGET_PIECE_SECONDS = 0.1
#: On SQLite, how long to leave the write lock free after each piece, as a share
#: of the piece's own time, and its bounds in seconds. SQLite lets a waiting
#: writer in only when it happens to look while the lock is free (a waiting
#: connection looks again every 100 ms at most), so a job that began its next
#: piece at once would keep other requests out as surely as one long transaction.
PAUSE_SHARE = 1.0
MIN_PAUSE_SECONDS = 0.02
MAX_PAUSE_SECONDS = 0.2

#: How many times a piece is tried when another writer gets in its way, and the
#: pause before each new attempt (growing with the attempts, up to the maximum).
PIECE_ATTEMPTS = 20
#: In a request, whose client waits, fewer: the stage is tried again as a whole
#: (see :mod:`.operations`).
REQUEST_PIECE_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 0.02
MAX_RETRY_PAUSE_SECONDS = 0.5

#: Records in the first piece of each model, before pieces are sized by time
#: (models differ tenfold in how long a record takes).
FIRST_PIECE_RECORDS = 10
#: Bounds on the records in one piece (the upper one stays below SQLite's limit
#: on query parameters).
MIN_PIECE_RECORDS = 5
MAX_PIECE_RECORDS = 500

# what morango's deserialization catches per record, and records as the error
_RECORD_ERRORS = (exceptions.ValidationError, exceptions.ObjectDoesNotExist, ValueError)
_ERROR_FIELDS = ["deserialization_error", "deserialization_exception"]


def supports_installed_morango():
    """
    :return: Whether the installed morango is one this module mirrors
    :rtype: bool
    """
    return _INTERNALS_FOUND and morango.__version__ in SUPPORTED_MORANGO_VERSIONS


def deserialize_in_pieces(profile, sync_filter, on_piece=None, pause=True):
    """
    Deserialize the dirty Store records under ``sync_filter`` as morango would, one
    short transaction at a time. Like morango's, the caller serializes first.

    Records another push merges while the pieces run are deserialized here if
    they arrive before their model is listed, and otherwise by that push's own
    stage, as with morango.

    :type profile: str
    :type sync_filter: morango.models.certificates.Filter
    :param on_piece: Called after each piece commits, with the number of records
        the piece worked on and the seconds its transaction took
    :type on_piece: callable|None
    :param pause: Whether to leave SQLite's write lock free after each piece (see
        :func:`pause_after_piece`): in a background job, yes; in a request, whose
        client waits, no
    :return: The longest piece's transaction, in seconds
    :rtype: float
    """

    run = _Run(profile, sync_filter, on_piece, pause)
    run.one_pass()
    run.log_end("Deserialized")
    return run.longest


def next_piece_size(records, seconds):
    """
    :return: How many records the next piece should take for its transaction to
        last about :data:`TARGET_PIECE_SECONDS`, after a piece of ``records`` took
        ``seconds``: at most twice as many, as one quick piece may be luck
    :rtype: int
    """
    scaled = int(records * TARGET_PIECE_SECONDS / max(seconds, 0.001))
    scaled = min(scaled, 2 * max(records, MIN_PIECE_RECORDS))
    return max(MIN_PIECE_RECORDS, min(MAX_PIECE_RECORDS, scaled))


def pause_after_piece(seconds):
    """
    On SQLite, leave the write lock free for a while after a piece that held it for
    ``seconds`` (see :data:`PAUSE_SHARE`); elsewhere, go on at once.
    """
    if connection.vendor == "sqlite":
        time.sleep(
            min(MAX_PAUSE_SECONDS, max(MIN_PAUSE_SECONDS, seconds * PAUSE_SHARE))
        )


def _still_dirty(batch):
    """
    The batch's Store records that are still dirty, read inside the piece's
    transaction (another stage may have applied or replaced one since the batch
    was listed), in the batch's order, which is the order morango reads them in.
    """

    records = Store.objects.filter(id__in=batch, dirty_bit=True).in_bulk()
    return [records[id_] for id_ in batch if id_ in records]


def batches(ids, size):
    """Yield slices of ``ids``; ``size`` is read again before each slice."""
    start = 0
    while start < len(ids):
        end = start + size()
        yield ids[start:end]
        start = end


class PieceRun(object):
    """
    What a run in pieces keeps from piece to piece: the counts and the longest
    piece, and the size of the next one. :meth:`commit_piece` runs one piece in a
    transaction of its own, as morango begins its own, reports it and then leaves
    the lock free (see :func:`pause_after_piece`).

    A piece that meets another writer (SQLite's lock still busy, a PostgreSQL
    serialization conflict with a user's request) is rolled back and tried again
    on its own, up to :data:`PIECE_ATTEMPTS` times: a conflict costs its piece,
    never the stage. What the run keeps from piece to piece is put back as it was
    before the failed attempt (see :meth:`_kept`).
    """

    #: The stage that :data:`PIECE_COMMITTED` names as its sender
    stage = None

    def __init__(self, profile, sync_filter, on_piece, pause=True):
        self.profile = profile
        self.sync_filter = sync_filter
        self.on_piece = on_piece
        self.pause = pause
        self.records = 0
        self.pieces = 0
        self.retries = 0
        self.longest = 0.0
        self._size = FIRST_PIECE_RECORDS

    def commit_piece(self, work, records, what, counted=None):
        """
        :param work: Does the piece's writes
        :param records: How many records or rows the piece works on
        :param what: Names them in the log
        :param counted: How many of them progress counts; all of them by default
        :return: What ``work`` returned
        """
        from .runner import is_transient_database_error

        attempts = PIECE_ATTEMPTS if self.pause else REQUEST_PIECE_ATTEMPTS
        for attempt in range(1, attempts + 1):
            kept = self._kept()
            try:
                with partitions_locked_for_piece(self.sync_filter):
                    # timed once the lock is the piece's: sizes follow the work
                    started = time.monotonic()
                    with _own_savepoint_if_nested():
                        with _begin_transaction(self.sync_filter, isolated=True):
                            result = work()
                    elapsed = time.monotonic() - started
            except DatabaseError as e:
                if attempt == attempts or not is_transient_database_error(e):
                    raise
                self._restore(kept)
                self.retries += 1
                logger.debug(
                    "Piece of %d %s records met another writer (%s); trying it again",
                    records,
                    what,
                    e,
                )
                time.sleep(min(MAX_RETRY_PAUSE_SECONDS, RETRY_PAUSE_SECONDS * attempt))
                continue
            break
        self.pieces += 1
        self.records += records
        self.longest = max(self.longest, elapsed)
        logger.debug(
            "Piece of %d %s records held the database %.3fs", records, what, elapsed
        )
        self._size = next_piece_size(records, elapsed)
        PIECE_COMMITTED.send(
            sender=self.stage,
            records=records if counted is None else counted,
            seconds=elapsed,
        )
        if self.on_piece is not None:
            self.on_piece(records, elapsed)
        if self.pause:
            pause_after_piece(elapsed)
        return result

    def log_end(self, done):
        """One line on the whole run; at INFO if another writer got in its way."""
        logger.log(
            logging.INFO if self.retries else logging.DEBUG,
            "%s %d records in %d pieces (%d tried again after meeting another "
            "writer); the longest held the database %.3fs",
            done,
            self.records,
            self.pieces,
            self.retries,
            self.longest,
        )

    def _kept(self):
        """What the run keeps between pieces, as a piece's failed attempt must find it."""
        return None

    def _restore(self, kept):
        """Put back what :meth:`_kept` returned."""

    def _piece_size(self):
        return self._size


def _own_savepoint_if_nested():
    """
    Inside a caller's transaction (a test's), a savepoint of the piece's own, so a
    failed attempt rolls back the piece alone: morango's transaction joins an
    outer one without a savepoint. Outside one, as jobs run, nothing more.
    """
    if connection.in_atomic_block:
        return transaction.atomic()
    return contextlib.nullcontext()


def partitions_locked_for_piece(sync_filter):
    """
    On PostgreSQL, hold the filter's partition locks (morango's advisory locks) for
    the whole piece, taken before its transaction begins. morango takes them as
    the first statement of its repeatable-read transaction, whose snapshot is then
    taken before the wait: the transaction wakes up with a view older than the
    stage it waited for, and conflicts with what that stage wrote. Taken first,
    the piece's snapshot starts once the lock is its own, and morango's own lock
    inside the transaction is granted at once (a session holds its locks again).
    Elsewhere, nothing to do.
    """
    return _session_partition_locks(sync_filter, wait=True)


def partitions_held_if_free(sync_filter):
    """
    On PostgreSQL, take the filter's partition locks (as
    :func:`partitions_locked_for_piece` does) only if no one holds them, and hold
    them until the block ends. Yields whether they are held: a stage run in the
    request that would wait behind another stage of the same facility (a job's
    pieces, other clients' stages) goes to a job instead, so its request stays
    short. Elsewhere (SQLite's lock is the whole database's, and its wait is
    bounded by its timeout), yields ``True`` at once.
    """
    return _session_partition_locks(sync_filter, wait=False)


@contextlib.contextmanager
def _session_partition_locks(sync_filter, wait):
    """
    morango's partition locks for ``sync_filter``, at session level, released
    when the block ends; with ``wait`` false, only those free at once. Yields
    whether all are held (always, where there are none to take).
    """
    from morango.sync.operations import DBBackend

    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield True
        return
    keys = _partition_lock_keys(sync_filter)
    taken = []
    try:
        for key1, key2, shared in keys:
            if wait:
                DBBackend._execute_lock(key1, key2=key2, session=True, shared=shared)
            elif not _try_advisory_lock(key1, key2, shared):
                break
            taken.append((key1, key2, shared))
        yield len(taken) == len(keys)
    finally:
        for key1, key2, shared in reversed(taken):
            DBBackend._execute_lock(
                key1, key2=key2, session=True, shared=shared, unlock=True
            )


def _try_advisory_lock(key1, key2, shared):
    """A session-level advisory lock, if free at once: whether it was taken."""
    keys = [key1] if key2 is None else [key1, key2]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_lock{}({})".format(
                "_shared" if shared else "", ", ".join(["%s"] * len(keys))
            ),
            keys,
        )
        return bool(cursor.fetchone()[0])


def _partition_lock_keys(sync_filter):
    """
    The advisory locks morango's ``lock_partitions`` takes for ``sync_filter``, as
    ``(key1, key2, shared)``: everything exclusively without a filter, or all
    partitions shared and each dataset's partition exclusively.
    """
    from morango.sync.backends.postgres import LOCK_ALL_PARTITIONS
    from morango.sync.backends.postgres import LOCK_PARTITION
    from morango.sync.backends.postgres import SIGNED_MAX_INTEGER

    if sync_filter is None:
        return [(LOCK_ALL_PARTITIONS, None, False)]
    keys = [(LOCK_ALL_PARTITIONS, None, True)]
    for partition in sorted(set(prefix[:32] for prefix in sync_filter)):
        partition_int = binascii.crc32(partition.encode("utf-8")) - SIGNED_MAX_INTEGER
        keys.append((LOCK_PARTITION, partition_int, False))
    return keys


class _Run(PieceRun):
    """
    One deserialization of a filter, piece by piece: what morango keeps for the
    length of its transaction (the foreign key cache, the records that failed, the
    records that reference deleted ones) is kept here for the length of the run.
    """

    stage = transfer_stages.DESERIALIZING

    def __init__(self, profile, sync_filter, on_piece, pause):
        super(_Run, self).__init__(profile, sync_filter, on_piece, pause)
        self.fk_cache = {}
        self.excluded = set()
        self.deleted = set()

    def _kept(self):
        return dict(self.fk_cache), set(self.excluded), set(self.deleted)

    def _restore(self, kept):
        self.fk_cache, self.excluded, self.deleted = kept

    def one_pass(self):
        for model in syncable_models.get_models(self.profile):
            if _self_referential_fk(model):
                self._self_referential_model(model)
            else:
                self._model(model)

    def _store_records(self, model):
        """The Store records morango deserializes with ``model``, as it selects them."""

        model_condition = Q(model_name=model.morango_model_name)
        for klass in model.morango_model_dependencies:
            model_condition |= Q(model_name=klass.morango_model_name)
        return Store.objects.filter(
            model_condition,
            under_filter(self.sync_filter, "partition"),
            profile=self.profile,
        )

    def _model(self, model):
        store_records = self._store_records(model)
        # read as morango reads them, so they come in the same order: a record may
        # depend on one before it (a group membership on the classroom's)
        dirty = [r.id for r in store_records.filter(dirty_bit=True).iterator()]
        self._size = FIRST_PIECE_RECORDS
        for batch in batches(dirty, self._piece_size):
            self.commit_piece(
                lambda: self._deserialize_batch(model, batch),
                len(batch),
                model.__name__,
            )

    def _deserialize_batch(self, model, batch):
        """morango's step for a model without a foreign key to itself, on ``batch``."""

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
        for store_model, app_model in app_models:
            if app_model.pk in self.excluded or app_model.pk in self.deleted:
                continue
            _save_deserialized_record(store_model, app_model, model.__name__)

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
        level = [r.id for r in children.iterator()]
        self._size = FIRST_PIECE_RECORDS
        while level:
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
                )
                .exclude(id__in=self.excluded)
                .iterator()
            ]
        self.commit_piece(lambda: self._mark_orphans(store_records), 0, model.__name__)

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
