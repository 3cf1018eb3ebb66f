"""
Which stage jobs are small enough to run beside the job holding the writers' turn
on SQLite, instead of waiting for it.

A stage small enough to run in the request goes to a job when the turn is taken
(see :func:`~kolibri_sync_extras_plugin.writer_turn.turn_handed_over_after`). Waiting
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
the same 500 rows, side by side, took 20 s). A push's cleanup runs beside the
holder too: its writes to the facility's database are its own session's row (and,
after an interrupted sync of the same client, the buffers of the transfers it
supersedes), and what takes it time, Kolibri's notifications about the logs
received, goes to their own database, as stock Kolibri writes them in each
client's closing request; waiting for the turn, a class set's cleanups ran one
after the other once every client had gone (6 s after 16 pushes).

The writes of a job beside the holder are marked as a request's are (see
:mod:`kolibri_sync_extras_plugin.requests_in_flight`), so the holder's pieces let
them in as they let a request's in; and the job that hands the turn over wakes
every waiting job that has become that small. Two stage jobs writing at once is
what every stage job does on PostgreSQL, where there is no turn: each piece reads
again what is left (see ``docs/guarantees.md``).
"""

from morango.constants import transfer_stages

from ..config import get_inline_stage_records
from ..request.inline import inline_record_limit
from ..stage_records import records_touched
from ..stage_status import open_sessions_by_job_id
from ..stage_status import transfer_session_of_job

__all__ = ["OWN_RECORDS_STAGES", "is_small", "small_waiting_jobs"]

#: The stages whose records are their transfer session's own (the records it
#: sends or received), which no other session's stage works on.
OWN_RECORDS_STAGES = frozenset([transfer_stages.QUEUING, transfer_stages.DEQUEUING])


def _open_sessions(transfer_session_ids):
    """The open transfer sessions of these ids, in one query. :rtype: dict"""
    from morango.models.core import TransferSession

    sessions = TransferSession.objects.filter(
        id__in=transfer_session_ids, active=True
    ).select_related("sync_session")
    return {session.id: session for session in sessions}


def _context(job, transfer_session):
    """The job's stage's context, if its session is open and at that stage."""
    from .context import BackgroundSessionContext

    if transfer_session is None or (
        transfer_session.transfer_stage != (job.kwargs or {}).get("stage")
    ):
        return None
    return BackgroundSessionContext(
        transfer_session,
        request_data=job.kwargs.get("request_data"),
        capabilities=job.kwargs.get("capabilities"),
    )


def _limit(stage):
    """
    The most records a small ``stage`` may touch, or ``None`` if no stage of it is
    small: a stage of :data:`OWN_RECORDS_STAGES` as many as a stage run in the
    request may, any other none at all.
    """
    threshold = get_inline_stage_records()
    if not threshold:
        return None
    limit = inline_record_limit(stage, threshold)
    if limit is None or stage in OWN_RECORDS_STAGES:
        return limit
    return 0


def _open_context(job):
    """The job's stage's context, if its session is open and at that stage."""
    transfer_session_id = transfer_session_of_job(job)
    return _context(job, _open_sessions([transfer_session_id]).get(transfer_session_id))


def is_small(job):
    """
    Whether ``job``'s stage is small (see
    :func:`~kolibri_sync_extras_plugin.stage_records.records_touched`): one of
    :data:`OWN_RECORDS_STAGES` that touches no more records than a stage run in
    the request may, any other with no record left to touch, or the cleanup of a
    push (the server received: there are no buffers of its own to delete); with
    ``INLINE_STAGE_RECORDS`` at 0 no stage is, and every job takes the turn.

    :type job: kolibri.core.tasks.job.Job
    :rtype: bool
    """
    stage = (job.kwargs or {}).get("stage")
    if stage == transfer_stages.CLEANUP:
        if not get_inline_stage_records():
            return False
        context = _open_context(job)
        return context is not None and context.is_receiver
    limit = _limit(stage)
    if limit is None:
        return False
    context = _open_context(job)
    if context is None:
        return False
    records = records_touched(context, at_most=limit)
    return records is not None and records <= limit


def small_waiting_jobs(waiting_jobs):
    """
    The jobs of ``waiting_jobs`` that have become small (see :func:`is_small`).

    Only a serializing or deserializing can: a queuing or dequeuing small enough
    never waits, and one that waits does not shrink. What those two have left
    depends on their stage, profile and filter, not on their session, so the
    sessions are read in one query and each stage of a filter is weighed once.

    :rtype: list[kolibri.core.tasks.job.Job]
    """
    candidates = [
        job
        for job in waiting_jobs
        if (job.kwargs or {}).get("stage") not in OWN_RECORDS_STAGES
        and _limit((job.kwargs or {}).get("stage")) == 0
    ]
    if not candidates:
        return []
    session_of_job = {
        job_id: session_id
        for job_id, (session_id, _) in open_sessions_by_job_id().items()
    }
    sessions = _open_sessions(
        [
            session_of_job[job.job_id]
            for job in candidates
            if job.job_id in session_of_job
        ]
    )
    weighed = {}
    small = []
    for job in candidates:
        context = _context(job, sessions.get(session_of_job.get(job.job_id)))
        if context is None:
            continue
        key = (
            context.stage,
            context.is_producer,
            context.sync_session.profile,
            str(context.filter),
        )
        if key not in weighed:
            weighed[key] = records_touched(context, at_most=0) == 0
        if weighed[key]:
            small.append(job)
    return small
