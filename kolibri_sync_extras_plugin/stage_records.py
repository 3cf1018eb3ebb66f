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
each source's query stops one row past it, so a large stage costs no more to
weigh than one just past the limit.

What serializing writes, the deletion logs and every syncable model's changed
rows, is counted in one statement. Building and compiling those 30-odd queries
cost a small sync's server more than running them (30 to 60 ms of a 10-record
push's 0.2 s request), so the statement is kept once compiled, for each
profile, filter and limit (see :func:`_serialized_first_count`): the models and
their managers never change while Kolibri runs. Never its count.

.. |version| replace:: 0.8.15
"""

import functools

from django.core.exceptions import EmptyResultSet
from django.db import connections
from morango.constants import transfer_stages
from morango.models.certificates import Filter
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


def _changed_app_rows(profile, sync_filter):
    """The app rows serializing writes into the store, one query per model."""
    return [
        changed_rows_of(model, sync_filter)
        for model in syncable_models.get_models(profile)
    ]


def _logged_deletions(profile):
    """The deletions serializing applies: every one logged for the profile."""
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


#: The source of what serializing writes into the store: the logged deletions
#: and the changed app rows, counted by :func:`_serialized_first_count`.
SERIALIZED_FIRST = "serialized first"


def _serializing_sources(context):
    # a push's server serializes nothing in this stage: it only reads its counters
    if not context.is_producer:
        return None
    return [SERIALIZED_FIRST]


def _deserializing_sources(context):
    # the indexed and the small first: a stage past the limit is then known
    # before the app's tables are read
    return _dirty_store_records(context) + [SERIALIZED_FIRST]


_SOURCES = {
    transfer_stages.SERIALIZING: _serializing_sources,
    transfer_stages.QUEUING: _store_records_within,
    transfer_stages.DEQUEUING: _pushed_records,
    transfer_stages.DESERIALIZING: _deserializing_sources,
}


def _count(context, sources, at_most=None):
    """
    The rows of ``sources`` (querysets, and :data:`SERIALIZED_FIRST`), exact up
    to ``at_most`` and ``at_most + 1`` past it. A queryset is counted by Django
    over what is left of the limit; what serializing writes reads one row past
    the whole limit, so that its kept statement is the same whatever the other
    sources held.
    """
    total = 0
    for source in sources:
        if source is SERIALIZED_FIRST:
            total += _serialized_first_count(context, at_most)
        elif at_most is None:
            total += source.count()
        else:
            # COUNT over a LIMIT: the query stops at the row that settles it
            total += source[: at_most - total + 1].count()
        if at_most is not None and total > at_most:
            return at_most + 1
    return total


def _serialized_first_count(context, at_most=None):
    """What serializing writes into the store under the context's filter."""
    sync_filter = context.filter
    return _run_count(
        *_serialized_first_statement(
            context.sync_session.profile,
            str(sync_filter) if sync_filter else None,
            at_most,
        )
    )


@functools.lru_cache(maxsize=64)
def _serialized_first_statement(profile, filter_text, at_most):
    """
    The counting statement of the logged deletions and changed app rows, kept
    for each profile, filter and limit (a server syncs a handful of filters).
    """
    sync_filter = Filter(filter_text) if filter_text is not None else None
    return _counting_statement(
        _logged_deletions(profile) + _changed_app_rows(profile, sync_filter), at_most
    )


def _counting_statement(querysets, at_most):
    """
    One ``COUNT`` over the rows of every queryset, each read no further than one
    row past ``at_most`` (``None``: every row).

    :return: The database alias, the SQL and its parameters
    :rtype: tuple
    """
    aliases = {queryset.db for queryset in querysets}
    if len(aliases) != 1:
        raise ValueError("sources on several databases: {}".format(sorted(aliases)))
    [alias] = aliases
    parts, params = [], []
    for queryset in querysets:
        rows = queryset.order_by().values("pk")
        if at_most is not None:
            rows = rows[: at_most + 1]
        try:
            sql, sql_params = rows.query.get_compiler(using=alias).as_sql()
        except EmptyResultSet:
            continue
        parts.append("SELECT 1 FROM ({}) AS source_{}".format(sql, len(parts)))
        params.extend(sql_params)
    if not parts:
        return alias, None, ()
    sql = "SELECT COUNT(*) FROM ({}) AS sources".format(" UNION ALL ".join(parts))
    return alias, sql, tuple(params)


def _run_count(alias, sql, params):
    if sql is None:
        return 0
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


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
    sources = None if sources is None else sources(context)
    return None if sources is None else _count(context, sources, at_most)


def _count_unless_nothing_dirty(context, at_most):
    """
    The deserializing sources' sum, or 0 with no dirty record: the pieces then
    serialize nothing first. One query decides that, where the rest would take
    one for each syncable model (and are not even built).
    """
    dirty = _count(context, _dirty_store_records(context), at_most)
    if dirty == 0 or (at_most is not None and dirty > at_most):
        return dirty
    total = dirty + _serialized_first_count(context, at_most)
    return total if at_most is None else min(total, at_most + 1)


def changed_rows_to_serialize(context):
    """
    :return: How many app rows a serializing stage writes into the store, or
        ``None`` where this instance does not send the data (a push's server)
    :rtype: int|None
    """
    if not context.is_producer:
        return None
    rows = _changed_app_rows(context.sync_session.profile, context.filter)
    return _count(context, rows)


def buffered_records(context):
    """
    :return: How many records the client pushed, which dequeuing merges
    :rtype: int
    """
    return _count(context, _pushed_records(context))


def records_to_deserialize(context):
    """
    :return: How many store records a deserialization under the filter works on:
        every dirty one, since morango tries again each record that failed before,
        and what an interrupted push left waiting
    :rtype: int
    """
    return _count(context, _dirty_store_records(context))
