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

The estimate is a bound, not a guess: the records of every kind the stage will
touch (see :mod:`kolibri_sync_extras_plugin.stage_records`: on a push, every dirty
record in the filter, those that failed before included, and the server's own
changes serialized first), so a stage is never taken for smaller than it is.
Stages differ widely in what a record costs them; each stage's records are
weighed against deserializing's (see :data:`RECORDS_PER_DESERIALIZED_RECORD`).
The count runs in every request that starts a configured stage, so it stops as
soon as it passes the stage's share of the threshold.

Cleanup always stays in the background: morango's client closes the transfer
session and moves on without waiting for the server's cleanup, so a background
cleanup costs the client nothing, and an inline one its whole duration.

A small stage runs in its request only while no other device's transfer is in
progress on the server (see :func:`other_transfers_in_progress`). When a class
set syncs, a stage in a request shares the server's processor with every other
client's requests and stage jobs, the cleanups' notifications among them: with
16 devices a push's dequeuing of 500 records, 80 ms of work, took 1.1 s in its
request under ``kolibri start`` and, with 32 devices behind uwsgi, 1.5 s. Sent
to a job, it runs beside the writers' turn at once (see
:mod:`~kolibri_sync_extras_plugin.job.small_stage`), and the request is a few
milliseconds; the client pays a poll. A device syncing alone still has its
small stages answered in their requests.
"""

import logging
from datetime import timedelta

from django.utils import timezone
from morango.constants import transfer_stages

from ..config import get_inline_stage_records
from ..stage_records import records_touched

logger = logging.getLogger(__name__)

__all__ = [
    "RECORDS_PER_DESERIALIZED_RECORD",
    "RECENT_ACTIVITY",
    "inline_record_limit",
    "other_transfers_in_progress",
    "runs_inline",
]

#: How recently another transfer session must have moved for its device to
#: count as syncing: a client that died mid-sync leaves its session open until
#: morango's cleanup of old sessions, and must not keep every later small stage
#: out of its request.
RECENT_ACTIVITY = timedelta(minutes=2)


#: How many records of each stage cost about as much as deserializing one. Stock
#: Kolibri 0.19 on SQLite, 2,000 records each way on the lab's 2-core machine:
#: serializing 0.77 s, queuing 0.02 to 0.07 s, dequeuing 0.18 s, deserializing
#: 6.3 s (one run; another, quieter one: 0.32, 0.03, 0.06 and 2.0 s). Every record
#: a stage touches weighs the same, so the rows a push's deserializing serializes
#: first weigh as much as the records it deserializes. Cleanup has no entry: it
#: never runs inline (see above).
RECORDS_PER_DESERIALIZED_RECORD = {
    transfer_stages.SERIALIZING: 8,
    transfer_stages.QUEUING: 50,
    transfer_stages.DEQUEUING: 20,
    transfer_stages.DESERIALIZING: 1,
}


def inline_record_limit(stage, threshold):
    """
    :param threshold: ``INLINE_STAGE_RECORDS``, in records of deserializing
    :return: The most records ``stage`` may touch and still run in the request,
        or ``None`` for a stage that never does
    :rtype: int|None
    """
    weight = RECORDS_PER_DESERIALIZED_RECORD.get(stage)
    return None if weight is None else threshold * weight


def runs_inline(context):
    """
    Whether a stage configured for the background is small enough to run in the
    request instead: whether every record it can touch (see
    :func:`~kolibri_sync_extras_plugin.stage_records.records_touched`) fits in its
    share of ``INLINE_STAGE_RECORDS``, and no other device is syncing.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: bool
    """
    threshold = get_inline_stage_records()
    if not threshold:
        return False
    limit = inline_record_limit(context.stage, threshold)
    if limit is None:
        return False
    if other_transfers_in_progress(context):
        logger.info(
            "Stage %s of transfer session %s goes to a background job: other "
            "devices are syncing with this server",
            context.stage,
            context.transfer_session.id,
        )
        return False
    records = records_touched(context, at_most=limit)
    if records is None or records > limit:
        return False
    logger.info(
        "Stage %s of transfer session %s runs in the request: it touches at most "
        "%d records, and %d may run inline",
        context.stage,
        context.transfer_session.id,
        records,
        limit,
    )
    return True


def other_transfers_in_progress(context):
    """
    Whether another device is syncing with this server: a transfer session of
    another client is open, short of its cleanup (which its client does not wait
    for), and moved within :data:`RECENT_ACTIVITY`.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: bool
    """
    from morango.models.core import TransferSession

    return (
        TransferSession.objects.filter(
            active=True,
            last_activity_timestamp__gte=timezone.now() - RECENT_ACTIVITY,
        )
        .exclude(transfer_stage=transfer_stages.CLEANUP)
        .exclude(
            sync_session__client_instance_id=context.sync_session.client_instance_id
        )
        .exists()
    )
