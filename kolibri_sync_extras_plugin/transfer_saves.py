"""
A full save of a transfer session keeps what others wrote since it was read.

morango saves a transfer session's whole row in places: its server's ``PATCH``
handler reads the row, lets the client's fields in and saves every column, and so
does a retried ``PATCH`` after a connection error. With stages in background jobs,
a job may write the same row in between: the counters it sends the client
(``server_fsic``, ``client_fsic``), the records to transfer (``records_total``),
the stage's status. The full save would put back what it read, and a client
would then queue from empty counters or see its stage started again.

So, just before a full save of an existing transfer session, each of the fields
below that this instance did not change since it was read is read again from the
database: what someone else wrote meanwhile stays, and what this code path set
itself still wins. One query per full save; saves naming their fields are left
alone.
"""

from django.db.models.signals import post_init
from django.db.models.signals import pre_save

__all__ = ["connect_transfer_saves", "KEPT_FIELDS"]

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


def connect_transfer_saves():
    """Connect the receivers above to morango's ``TransferSession``."""
    from django.db.models.signals import post_save
    from morango.models.core import TransferSession

    uid = "sync_extras_transfer_saves"
    post_init.connect(_remember_as_read, sender=TransferSession, dispatch_uid=uid)
    pre_save.connect(_keep_what_others_wrote, sender=TransferSession, dispatch_uid=uid)
    post_save.connect(_remember_as_read, sender=TransferSession, dispatch_uid=uid)
