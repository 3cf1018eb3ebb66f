"""
Which configured background stages are small enough to run inside the request.

A background stage costs a polling client at least one sleep of morango's
backoff (0.3 s, then 0.9 s, then 1 s each) after the request that started it,
however quickly its job ends; on the small, everyday sync of one device that is
most of the server's share of the sync. A stage whose work is estimated at no
more than ``INLINE_STAGE_RECORDS`` records' worth of deserializing therefore runs
in the request, with morango's and Kolibri's own operations, exactly as stock
Kolibri runs it: the client gets its result in the answer to the request that asked for it, an error
reaches the client through morango's controller as it does without the plugin,
and no job is ever enqueued for it, so it cannot run twice.

The estimates count rows with a query or two, and are upper bounds of the
records the stage will touch (every dirty record in the filter, those that failed
before included, and on a push the server's own changes serialized first), so a
stage is never taken for smaller than it is.
Stages differ widely in what a record costs them; each stage's records are
weighed against deserializing's (see :data:`RECORDS_PER_DESERIALIZED_RECORD`).

Cleanup always stays in the background: morango's client closes the transfer
session and moves on without waiting for the server's cleanup, so a background
cleanup costs the client nothing, and an inline one its whole duration.
"""

import logging

from morango.constants import transfer_stages

from ..config import get_inline_stage_records
from ..piecewise.serialize import changed_rows
from ..stage_records import records_before

logger = logging.getLogger(__name__)

__all__ = [
    "RECORDS_PER_DESERIALIZED_RECORD",
    "estimated_stage_records",
    "estimated_stage_cost",
    "runs_inline",
]

#: How many records of each stage cost about as much as deserializing one. Stock
#: Kolibri 0.19 on SQLite, 2,000 records each way on the lab's 2-core machine:
#: serializing 0.77 s, queuing 0.02 to 0.07 s, dequeuing 0.18 s, deserializing
#: 6.3 s (one run; another, quieter one: 0.32, 0.03, 0.06 and 2.0 s). Cleanup has
#: no entry: it never runs inline (see above).
RECORDS_PER_DESERIALIZED_RECORD = {
    transfer_stages.SERIALIZING: 8,
    transfer_stages.QUEUING: 50,
    transfer_stages.DEQUEUING: 20,
    transfer_stages.DESERIALIZING: 1,
}


def estimated_stage_records(context):
    """
    An upper bound of the records the context's current stage will touch (see
    :mod:`kolibri_sync_extras_plugin.stage_records`). Deserializing a push first
    serializes the server's own changes under the filter, so those rows count
    too.

    :type context: morango.sync.context.LocalSessionContext
    :return: The estimate, or ``None`` when the stage has no estimate here
    :rtype: int|None
    """
    records = records_before(context)
    if records is not None and context.stage == transfer_stages.DESERIALIZING:
        records += changed_rows(context.sync_session.profile, context.filter)
    return records


def estimated_stage_cost(context):
    """
    The context's current stage's estimated work, in records of deserializing.

    :type context: morango.sync.context.LocalSessionContext
    :return: The estimate, or ``None`` for a stage that never runs inline
    :rtype: float|None
    """
    records = estimated_stage_records(context)
    if records is None or context.stage not in RECORDS_PER_DESERIALIZED_RECORD:
        return None
    return records / RECORDS_PER_DESERIALIZED_RECORD[context.stage]


def runs_inline(context):
    """
    Whether a stage configured for the background is small enough to run in the
    request instead.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: bool
    """
    threshold = get_inline_stage_records()
    if not threshold:
        return False
    cost = estimated_stage_cost(context)
    if cost is None or cost > threshold:
        return False
    logger.info(
        "Stage %s of transfer session %s runs in the request: about %d records "
        "of deserializing, at most %d run inline",
        context.stage,
        context.transfer_session.id,
        cost,
        threshold,
    )
    return True
