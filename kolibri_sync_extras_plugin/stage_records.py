"""
How many records a server stage works on, counted before it runs: the bound
behind running a small stage in the request (:mod:`.request.inline`) and the
progress a background stage reports (:mod:`.job.progress`).

A stage touches records of a few kinds, its *sources*, each a query whose rows
include every record of that kind the stage will touch, as morango selects them
(morango |version|, and 0.7 to 0.8.3 the same):

- serializing (a pull's server): the app rows changed under the filter, and the
  deletions logged for the profile, which morango applies whatever their
  partition;
- queuing: the store records under the filter, of which it buffers those the
  client lacks;
- dequeuing: the records the client pushed;
- deserializing (a push's server): every dirty store record of the profile under
  the filter, which is what the push brought, what an interrupted push left and
  every record that failed before (morango keeps those dirty and tries each one
  again), and then what morango serializes first so that local changes win: the
  changed app rows and logged deletions, as above. Where the plugin's pieces run
  it and no record under the filter is dirty, it touches none (see
  :func:`~kolibri_sync_extras_plugin.piecewise.operations.deserialized_in_pieces`).

The sum over a stage's sources therefore bounds its work. Counted with a limit,
each source's query stops at what is left of it, so a large stage costs no more
to weigh than one just past the limit.

.. |version| replace:: 0.8.15
"""

from morango.constants import transfer_stages
from morango.models.core import Buffer
from morango.models.core import DeletedModels
from morango.models.core import HardDeletedModels
from morango.models.core import Store
from morango.registry import syncable_models

from .piecewise.operations import deserialized_in_pieces
from .piecewise.stamping import changed_rows_of
from .piecewise.store_queries import dirty_store_records
from .piecewise.store_queries import under_filter

__all__ = [
    "buffered_records",
    "changed_rows_to_serialize",
    "records_touched",
    "records_to_deserialize",
]


def _changed_app_rows(context):
    """The app rows serializing writes into the store, one query per model."""
    return [
        changed_rows_of(model, context.filter)
        for model in syncable_models.get_models(context.sync_session.profile)
    ]


def _logged_deletions(context):
    """The deletions serializing applies: every one logged for the profile."""
    profile = context.sync_session.profile
    return [
        DeletedModels.objects.filter(profile=profile),
        HardDeletedModels.objects.filter(profile=profile),
    ]


def _store_records_within(context):
    return [Store.objects.filter(under_filter(context.filter))]


def _pushed_records(context):
    return [Buffer.objects.filter(transfer_session=context.transfer_session)]


def _dirty_store_records(context):
    return [
        dirty_store_records(context.filter).filter(profile=context.sync_session.profile)
    ]


def _serializing_sources(context):
    # a push's server serializes nothing in this stage: it only reads its counters
    if not context.is_producer:
        return None
    return _logged_deletions(context) + _changed_app_rows(context)


def _deserializing_sources(context):
    # the indexed and the small first: a stage past the limit is then known
    # before the app's tables are read
    return _dirty_store_records(context) + _serialized_first(context)


def _serialized_first(context):
    """What a deserializing stage serializes before it applies the dirty records."""
    return _logged_deletions(context) + _changed_app_rows(context)


_SOURCES = {
    transfer_stages.SERIALIZING: _serializing_sources,
    transfer_stages.QUEUING: _store_records_within,
    transfer_stages.DEQUEUING: _pushed_records,
    transfer_stages.DESERIALIZING: _deserializing_sources,
}


def _count(querysets, at_most=None):
    total = 0
    for queryset in querysets:
        if at_most is None:
            total += queryset.count()
            continue
        # COUNT over a LIMIT: the query stops at the row that settles it
        total += queryset[: at_most - total + 1].count()
        if total > at_most:
            break
    return total


def records_touched(context, at_most=None):
    """
    An upper bound of the records the context's current stage touches: the sum
    over its sources (see above).

    :type context: morango.sync.context.LocalSessionContext
    :param at_most: Count no further than one past this: the answer is exact up to
        ``at_most``, and ``at_most + 1`` for any stage larger than that
    :type at_most: int|None
    :return: The count, or ``None`` for a stage with no count before it runs
    :rtype: int|None
    """
    if deserialized_in_pieces(context):
        return _count_unless_nothing_dirty(context, at_most)
    sources = _SOURCES.get(context.stage)
    querysets = None if sources is None else sources(context)
    return None if querysets is None else _count(querysets, at_most)


def _count_unless_nothing_dirty(context, at_most):
    """
    The deserializing sources' sum, or 0 with no dirty record: the pieces then
    serialize nothing first. One query decides that, where the rest would take
    one for each syncable model (and are not even built).
    """
    total = _count(_dirty_store_records(context), at_most)
    if total == 0 or (at_most is not None and total > at_most):
        return total
    left = None if at_most is None else at_most - total
    return total + _count(_serialized_first(context), left)


def changed_rows_to_serialize(context):
    """
    :return: How many app rows a serializing stage writes into the store, or
        ``None`` where this instance does not send the data (a push's server)
    :rtype: int|None
    """
    if not context.is_producer:
        return None
    return _count(_changed_app_rows(context))


def buffered_records(context):
    """
    :return: How many records the client pushed, which dequeuing merges
    :rtype: int
    """
    return _count(_pushed_records(context))


def records_to_deserialize(context):
    """
    :return: How many store records a deserialization under the filter works on:
        every dirty one, since morango tries again each record that failed before,
        and what an interrupted push left waiting
    :rtype: int
    """
    return _count(_dirty_store_records(context))
