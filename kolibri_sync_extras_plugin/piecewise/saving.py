"""
Saving a piece's deserialized records: morango's per-record save, less the
statements the piece's own transaction shows to change nothing.

For each record it deserializes, morango (``_save_deserialized_record`` in
|version|) saves the app row in a savepoint, with the save signals muted, then
saves the Store record clean: its dirty bit and error cleared, one ``UPDATE``
each. Django's save of a row whose primary key is set tries an ``UPDATE`` first
and inserts only when that changed no row. In a push of new learner activity
nearly every row is new, so a third of the deserializing went on ``UPDATE``
statements that matched nothing and on one ``UPDATE`` of the store per record.

Here, within the piece's transaction:

- the rows already in each app table are read once, and a row that is not there
  is inserted without the ``UPDATE`` before it. The piece holds SQLite's write
  lock from its first statement, so no row can appear meanwhile; on PostgreSQL
  the piece reads one snapshot, in which Django's ``UPDATE`` would have found no
  row either. An insert that fails all the same is rolled back to its savepoint
  and the row saved as morango saves it, which then succeeds or fails as it
  would have without the insert;
- the Store records whose rows were saved are marked clean in one ``UPDATE`` at
  the end of the piece, setting the same three fields to the same values. Nothing
  in the piece reads them in between, and the piece commits or rolls back whole.

A save that fails is handled as morango handles it: its savepoint rolled back,
its error recorded on its Store record, which stays dirty. So a piece commits the
same rows as morango's saves would, one record at a time, in the same
transaction; ``test_pieces.py`` compares the two on the same data.

.. |version| replace:: 0.8.15
"""

import logging

from django.core import exceptions
from django.db import IntegrityError
from django.db import connection
from django.db import transaction
from django.db.models import signals
from morango.models.core import Store
from morango.sync.utils import mute_signals

logger = logging.getLogger(__name__)

__all__ = ["save_deserialized_records"]

# what morango's save of one deserialized record catches, and records as its error
_SAVE_ERRORS = (
    exceptions.ValidationError,
    exceptions.ObjectDoesNotExist,
    ValueError,
    IntegrityError,
)
_ERROR_FIELDS = ["deserialization_error", "deserialization_exception"]
#: How many ids one query names, looking rows up or marking them clean (below
#: SQLite's limit on query parameters)
_IDS_PER_QUERY = 500


def save_deserialized_records(records, model_name):
    """
    Save each deserialized app row of ``records``, in order, and mark its Store
    record clean, or record why it could not be saved, as morango does; inside the
    piece's transaction.

    :param records: ``(store record, app row)`` pairs that deserialized and whose
        foreign keys held
    :param model_name: Names the model in the log
    :return: How many were saved
    :rtype: int
    """
    absent = _rows_not_in_their_tables(app_model for _, app_model in records)
    saved = []
    for store_model, app_model in records:
        key = _row_key(app_model)
        try:
            if key not in absent or not _inserted(app_model):
                _save(app_model)
        except _SAVE_ERRORS as e:
            store_model.set_deserialization_error(e)
            store_model.save(update_fields=_ERROR_FIELDS)
            logger.warning(
                "Failed to deserialize Store record %s for %s: %s",
                store_model.id,
                model_name,
                e,
            )
            continue
        # the row is in its table now: a second record of it would update it
        absent.discard(key)
        saved.append(store_model.id)
    _mark_clean(saved)
    return len(saved)


def _save(app_model, **how):
    """morango's save of one deserialized row."""
    with transaction.atomic():
        with mute_signals(signals.pre_save, signals.post_save):
            app_model.save(update_dirty_bit_to=False, **how)


def _inserted(app_model):
    """
    Insert a row read as absent. If the insert fails, the row is saved as morango
    saves it instead, so that it ends as morango's save leaves it whatever made the
    insert fail.

    :return: Whether the insert succeeded
    :rtype: bool
    """
    try:
        _save(app_model, force_insert=True)
        return True
    except _SAVE_ERRORS:
        return False


def _row_key(app_model):
    """
    :return: The row's model and primary key, as the database holds the key
        (morango's ids are lower-case hex); ``None`` for a row with no key, or one
        that cannot be put in the database, whose save then fails as morango's does
    """
    model = type(app_model)._meta.concrete_model
    if app_model.pk is None:
        return None
    try:
        return model, str(model._meta.pk.get_db_prep_value(app_model.pk, connection))
    except (TypeError, ValueError):
        return None


def _rows_not_in_their_tables(app_models):
    """
    :return: The keys (see :func:`_row_key`) of the rows that are not in their
        tables now; only rows Django saves in one table, so that an insert of
        that table alone is the whole save
    :rtype: set
    """
    by_model = {}
    for app_model in app_models:
        key = _row_key(app_model)
        if key is None or key[0]._meta.parents:
            continue
        by_model.setdefault(key[0], set()).add(key[1])
    absent = set()
    for model, pks in by_model.items():
        pks = sorted(pks)
        for start in range(0, len(pks), _IDS_PER_QUERY):
            batch = pks[start : start + _IDS_PER_QUERY]
            present = set(
                model._base_manager.filter(pk__in=batch).values_list("pk", flat=True)
            )
            absent.update((model, pk) for pk in batch if pk not in present)
    return absent


def _mark_clean(store_ids):
    """What morango's save of each Store record after its row was saved sets."""
    for start in range(0, len(store_ids), _IDS_PER_QUERY):
        Store.objects.filter(id__in=store_ids[start : start + _IDS_PER_QUERY]).update(
            dirty_bit=False,
            deserialization_error=None,
            deserialization_exception=None,
        )
