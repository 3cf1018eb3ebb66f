"""
Which stage jobs are small enough to run beside the job holding the writers' turn
on SQLite, instead of waiting for it.

A stage small enough to run in the request goes to a job when the turn is taken
(see :func:`~kolibri_sync_extras_plugin.writer_turn.turn_for_a_request`). Waiting
in line there, behind a deserializing job of half a minute, a push's dequeuing of
a few hundred records came too late for that job to apply its records, and each
such push then needed a deserializing job of its own, one after the other. And a
push's deserializing applies every received record under its filter, whichever
push brought it: with a class set of devices pushing at once, each client's
deserializing job is queued while the records are many, the first to run applies
them all, and the others, left with nothing, waited for the turn one after the
other behind Kolibri's job checker (about 0.3 s each, 10 s for 32 devices).

So a job whose stage is small runs at once, beside the holder: a queuing or
dequeuing, whose records are its own transfer session's, as small as one that
runs in the request (the same bound:
:func:`~kolibri_sync_extras_plugin.request.inline.inline_record_limit`); a
serializing or deserializing, whose records are the filter's and so another
session's job may be working on them, only with nothing left (two of them side by
side would do the same work twice: on the uwsgi topology two pulls' serializing of
the same 500 rows, side by side, took 20 s). Its writes are marked as a
request's are (see :mod:`kolibri_sync_extras_plugin.requests_in_flight`), so the
holder's pieces let them in as they let a request's in; and the job that hands the turn over wakes
every waiting job that has become that small. Two stage jobs writing at once is
what every stage job does on PostgreSQL, where there is no turn: each piece reads
again what is left (see ``docs/guarantees.md``).
"""

from morango.constants import transfer_stages

from ..config import get_inline_stage_records
from ..request.inline import inline_record_limit
from ..stage_records import records_touched
from ..stage_status import transfer_session_of_job

__all__ = ["OWN_RECORDS_STAGES", "is_small", "small_waiting_jobs"]

#: The stages whose records are their transfer session's own (the records it
#: sends or received), which no other session's stage works on.
OWN_RECORDS_STAGES = frozenset([transfer_stages.QUEUING, transfer_stages.DEQUEUING])


def _context(job):
    from morango.models.core import TransferSession

    from .context import BackgroundSessionContext

    stage = (job.kwargs or {}).get("stage")
    transfer_session_id = transfer_session_of_job(job)
    if transfer_session_id is None:
        return None
    transfer_session = (
        TransferSession.objects.filter(id=transfer_session_id, active=True)
        .select_related("sync_session")
        .first()
    )
    if transfer_session is None or transfer_session.transfer_stage != stage:
        return None
    return BackgroundSessionContext(
        transfer_session,
        request_data=job.kwargs.get("request_data"),
        capabilities=job.kwargs.get("capabilities"),
    )


def is_small(job):
    """
    Whether ``job``'s stage is small (see
    :func:`~kolibri_sync_extras_plugin.stage_records.records_touched`): one of
    :data:`OWN_RECORDS_STAGES` that touches no more records than a stage run in
    the request may, or any other with no record left to touch. A cleanup, which
    has no count, never is; with ``INLINE_STAGE_RECORDS`` at 0 no stage is, and
    every job takes the turn.

    :type job: kolibri.core.tasks.job.Job
    :rtype: bool
    """
    threshold = get_inline_stage_records()
    if not threshold:
        return False
    stage = (job.kwargs or {}).get("stage")
    limit = inline_record_limit(stage, threshold)
    if limit is None:
        return False
    if stage not in OWN_RECORDS_STAGES:
        limit = 0
    context = _context(job)
    if context is None:
        return False
    records = records_touched(context, at_most=limit)
    return records is not None and records <= limit


def small_waiting_jobs(waiting_jobs):
    """
    :return: The jobs of ``waiting_jobs`` that are small now (see :func:`is_small`)
    :rtype: list[kolibri.core.tasks.job.Job]
    """
    return [job for job in waiting_jobs if is_small(job)]
