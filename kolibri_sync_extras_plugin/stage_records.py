"""
How many records a server stage works on, counted before it runs: the one
estimate behind running a small stage in the request (:mod:`.request.inline`)
and the progress a background stage reports (:mod:`.job.progress`).

Each count is one query and an upper bound of the records the stage touches, so
a stage is never taken for smaller than it is.
"""

from morango.constants import transfer_stages

from .piecewise.serialize import changed_rows
from .piecewise.store_queries import dirty_store_records
from .piecewise.store_queries import under_filter

__all__ = [
    "buffered_records",
    "changed_rows_to_serialize",
    "records_before",
    "records_to_deserialize",
    "store_records_within",
]


def changed_rows_to_serialize(context):
    """
    :return: How many app rows a serializing stage writes into the store, or
        ``None`` where this instance does not send the data (a push's server)
    :rtype: int|None
    """
    if not context.is_producer:
        return None
    return changed_rows(context.sync_session.profile, context.filter)


def store_records_within(context):
    """
    :return: Store records within the filter: at most what queuing will buffer
    :rtype: int
    """
    from morango.models.core import Store

    return Store.objects.filter(under_filter(context.filter)).count()


def buffered_records(context):
    """
    :return: How many records the client pushed, which dequeuing merges
    :rtype: int
    """
    from morango.models.core import Buffer

    return Buffer.objects.filter(transfer_session=context.transfer_session).count()


def records_to_deserialize(context):
    """
    :return: How many store records a deserialization under the filter works on:
        every dirty one, since morango tries again each record that failed before,
        and what an interrupted push left waiting
    :rtype: int
    """
    return (
        dirty_store_records(context.filter)
        .filter(profile=context.sync_session.profile)
        .count()
    )


_BEFORE = {
    transfer_stages.SERIALIZING: changed_rows_to_serialize,
    transfer_stages.QUEUING: store_records_within,
    transfer_stages.DEQUEUING: buffered_records,
    transfer_stages.DESERIALIZING: records_to_deserialize,
}


def records_before(context):
    """
    An upper bound of the records the context's current stage works on.

    :type context: morango.sync.context.LocalSessionContext
    :return: The count, or ``None`` for a stage with no count before it runs
    :rtype: int|None
    """
    count = _BEFORE.get(context.stage)
    return None if count is None else count(context)
