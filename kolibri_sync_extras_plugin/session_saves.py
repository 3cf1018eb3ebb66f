"""
Saves of morango's session rows keep what another writer put there since the row
was read. Stage jobs write the same rows as the requests of the sync they serve:

- **A full save of a transfer session** keeps what a job wrote after the row was
  read. morango's server ``PATCH`` handler reads the row, lets the client's
  fields in and saves every column, and so does a retried ``PATCH`` after a
  connection error. A job may write the same row in between: the counters it
  sends the client (``server_fsic``, ``client_fsic``), the records to transfer
  (``records_total``), the stage's status. The full save would put back what it
  read, and a client would queue from empty counters or see its stage started
  again. So just before a full save of an existing transfer session, each of the
  fields below that the saver left as it read them is read again from the
  database: what someone else wrote meanwhile stays, and what the saver set
  itself still wins. Saves naming their fields are left alone.
- **A save of a sync session's ``extra_fields``** merges with what is there.
  Kolibri's sync operations keep there which stage of which transfer they have
  handled, each by reading the whole field, adding its key and writing it back:
  a push's cleanup job and the next transfer's stages in a request may do it at
  once, and one's marks would be lost (the operation would then run its first
  handling twice). Just before such a save, the field is read again and the
  saver's keys are laid over it, lists of marks joined.
- **A ``PATCH`` that sets no field saves nothing.** A client moves a transfer
  to its next stage with a ``PATCH`` naming the stage alone; morango's handler
  takes the stage out, proceeds to it, and hands what is left (nothing) to the
  model's update, which reads the row again and saves it whole: every column
  written back as it was just read. On SQLite that write is one more turn at the
  write lock for each stage a client asks for. Without it the row ends as the
  save would have left it had it been made the moment the row was read, and a
  change another writer made since is not put back. The client's answer is the
  row read once more (a read takes no turn at the lock).

The first two cost one query per save they concern; what is left is the moment
between that query and the save's own.
"""

import json

from django.db.models.signals import post_init
from django.db.models.signals import pre_save

__all__ = ["connect_session_saves", "KEPT_FIELDS", "save_only_what_a_patch_sets"]

#: The columns a background stage writes, which a full save must not put back.
KEPT_FIELDS = (
    "server_fsic",
    "client_fsic",
    "records_total",
    "records_transferred",
    "transfer_stage",
    "transfer_stage_status",
)
_AS_READ = "_sync_extras_as_read"


_MISSING = object()


def _loaded(instance, field):
    # a deferred field is not in the instance's __dict__; reading it would query
    return instance.__dict__.get(field, _MISSING)


def _remember_as_read(sender, instance, **kwargs):
    """When a row is loaded (or built, or saved), note the kept fields' values."""
    setattr(
        instance, _AS_READ, {field: _loaded(instance, field) for field in KEPT_FIELDS}
    )


def _keep_what_others_wrote(sender, instance, update_fields=None, raw=False, **kwargs):
    """Before a full save, read again the kept fields this instance left as read."""
    if raw or update_fields is not None or instance._state.adding:
        return
    as_read = getattr(instance, _AS_READ, None)
    if as_read is None:
        return
    unchanged = [
        field
        for field in KEPT_FIELDS
        if as_read[field] is not _MISSING and _loaded(instance, field) == as_read[field]
    ]
    if not unchanged:
        return
    current = sender.objects.filter(pk=instance.pk).values(*unchanged).first()
    if current is None:
        return
    for field, value in current.items():
        setattr(instance, field, value)


def _merged_storage(current, mine):
    """``mine`` laid over ``current``; where both are lists, ``current``'s first."""
    merged = dict(current)
    for key, value in mine.items():
        before = merged.get(key)
        if isinstance(before, list) and isinstance(value, list):
            value = before + [item for item in value if item not in before]
        merged[key] = value
    return merged


def _merge_extra_fields(sender, instance, update_fields=None, raw=False, **kwargs):
    """Before a sync session's ``extra_fields`` is written, merge with the row's."""
    if raw or instance._state.adding:
        return
    if update_fields is not None and "extra_fields" not in update_fields:
        return
    current = (
        sender.objects.filter(pk=instance.pk)
        .values_list("extra_fields", flat=True)
        .first()
    )
    try:
        current = json.loads(current or "{}")
        mine = json.loads(instance.extra_fields or "{}")
    except ValueError:
        return
    if not isinstance(current, dict) or not isinstance(mine, dict):
        return
    instance.extra_fields = json.dumps(_merged_storage(current, mine))


def _save_what_was_set(serializer, perform_update):
    if serializer.validated_data:
        perform_update(serializer)
        return
    # the answer is the row as it stands, as a save would have read it again
    serializer.instance.refresh_from_db()


def save_only_what_a_patch_sets():
    """Make morango's transfer session ``PATCH`` skip a save that sets nothing."""
    from morango.api.viewsets import TransferSessionViewSet

    if getattr(TransferSessionViewSet, _STOCK_PERFORM_UPDATE, None) is not None:
        return
    stock = TransferSessionViewSet.perform_update
    setattr(TransferSessionViewSet, _STOCK_PERFORM_UPDATE, stock)

    def perform_update(self, serializer):
        _save_what_was_set(serializer, lambda s: stock(self, s))

    TransferSessionViewSet.perform_update = perform_update


_STOCK_PERFORM_UPDATE = "_sync_extras_stock_perform_update"


def connect_session_saves():
    """Connect the receivers above to morango's session models."""
    from django.db.models.signals import post_save
    from morango.models.core import SyncSession
    from morango.models.core import TransferSession

    uid = "sync_extras_session_saves"
    post_init.connect(_remember_as_read, sender=TransferSession, dispatch_uid=uid)
    pre_save.connect(_keep_what_others_wrote, sender=TransferSession, dispatch_uid=uid)
    post_save.connect(_remember_as_read, sender=TransferSession, dispatch_uid=uid)
    pre_save.connect(_merge_extra_fields, sender=SyncSession, dispatch_uid=uid)
    save_only_what_a_patch_sets()
