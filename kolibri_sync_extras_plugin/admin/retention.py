"""
How long finished stage jobs stay in Kolibri's job storage.

Each pull leaves two stage jobs and each push three, and Kolibri keeps a finished
job until someone clears it, so job storage would grow with every sync. A
periodic Kolibri job clears a finished stage job once its transfer session has
closed (or is gone) and it finished longer ago than ``[Sync]
COMPLETED_STAGE_JOB_RETENTION`` (completed) or ``FAILED_STAGE_JOB_RETENTION``
(failed or cancelled) seconds, so the status command and the task list still show
live and recent stages. The job repeats every ``STAGE_JOB_CLEANUP_INTERVAL``
seconds by Kolibri's own scheduling (a fixed job id, ``repeat=None``), and is
scheduled whenever a stage job is, so it exists wherever stage jobs do, whether
workers run under ``kolibri start`` or ``kolibri services``.
"""

import logging
from datetime import timedelta

from django.utils import timezone
from kolibri.core.tasks.exceptions import JobNotFound
from kolibri.core.tasks.exceptions import JobRunning
from kolibri.core.tasks.job import State
from morango.models.core import TransferSession

from ..compat import aware_utc
from ..compat import job_rows
from ..compat import jobs_in_states
from ..compat import parse_time
from ..config import get_retention_settings
from ..stage_status import FINISHED_JOB_STATES
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import SYNC_EXTRAS_QUEUE
from ..stage_status import open_sessions_by_job_id

logger = logging.getLogger(__name__)

__all__ = [
    "RETENTION_JOB_ID",
    "RETENTION_QUEUE",
    "clear_expired_stage_jobs",
    "expired_stage_jobs",
    "schedule_retention",
]

#: The one job that clears expired stage jobs: a fixed id, so it is never doubled.
#: Kolibri's job table holds ids of at most 36 characters, which PostgreSQL enforces.
RETENTION_JOB_ID = "sync_extras_stage_job_retention"
#: The id 1.0.0 scheduled it under, too long for PostgreSQL; SQLite kept it.
_RETENTION_JOB_ID_BEFORE = "kolibri_sync_extras_stage_job_retention"
#: Its queue, apart from the stage jobs' own.
RETENTION_QUEUE = "sync_extras_retention"


def _ended(job, scheduled_time):
    """
    :return: When the job finished, as its progress recorded it; else when it was
        enqueued (Kolibri 0.19 does not fill the job table's update time)
    :rtype: datetime.datetime|None
    """
    ended = parse_time((job.extra_metadata or {}).get("finished_at"))
    return ended or scheduled_time


def expired_stage_jobs(now=None):
    """
    The finished stage jobs past their retention whose transfer session is closed.

    :param now: The time to judge by; now by default
    :rtype: list[kolibri.core.tasks.job.Job]
    """
    now = now or timezone.now()
    settings = get_retention_settings()
    finished = jobs_in_states(
        FINISHED_JOB_STATES, queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK
    )
    if not finished:
        return []
    # jobs of 1.0.0 name their session; newer ones match an open session's job ids
    named = {job.kwargs.get("transfer_session_id") for job in finished} - {None}
    open_named = set(
        TransferSession.objects.filter(id__in=named, active=True).values_list(
            "id", flat=True
        )
    )
    jobs_of_open_sessions = open_sessions_by_job_id()
    scheduled = {
        row.id: row.scheduled_time
        for row in job_rows(queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK)
    }
    expired = []
    for job in finished:
        if (
            job.job_id in jobs_of_open_sessions
            or job.kwargs.get("transfer_session_id") in open_named
        ):
            continue
        retention = (
            settings.completed_seconds
            if job.state == State.COMPLETED
            else settings.failed_seconds
        )
        ended = _ended(job, scheduled.get(job.job_id))
        if ended is None or (now - ended).total_seconds() >= retention:
            expired.append(job)
    return expired


def clear_expired_stage_jobs():
    """
    Clear the stage jobs :func:`expired_stage_jobs` finds, through job storage (so
    its hooks see each clearing). Only finished jobs are cleared: a job run again
    in the meantime stays.

    :return: How many jobs were cleared
    :rtype: dict
    """
    from kolibri.core.tasks.main import job_storage

    expired = expired_stage_jobs()
    for job in expired:
        job_storage.clear(job_id=job.job_id, force=False)
    if expired:
        logger.info(
            "Cleared %d finished stage jobs of closed transfer sessions from job "
            "storage",
            len(expired),
        )
    return {"cleared": len(expired)}


def schedule_retention(clear_finished_stage_jobs):
    """
    Make sure the clearing job is scheduled to repeat at the configured interval;
    cheap when it already is (one read of job storage).

    :param clear_finished_stage_jobs: The registered clearing task (see
        :mod:`kolibri_sync_extras_plugin.tasks`)
    """
    from kolibri.core.tasks.main import job_storage

    interval = get_retention_settings().interval_seconds
    _clear_job_under_old_id(job_storage)
    try:
        orm_job = job_storage.get_orm_job(RETENTION_JOB_ID)
    except JobNotFound:
        orm_job = None
    if (
        orm_job is not None
        and orm_job.interval == interval
        and orm_job.func == clear_finished_stage_jobs.func_string
        and not _put_off(orm_job, interval)
    ):
        return
    # scheduled anew: missing, at another interval, or stored under the task's
    # path before 1.1 (``kolibri_sync_extras_plugin.retention``), which no longer
    # imports
    try:
        clear_finished_stage_jobs.enqueue_in(
            timedelta(seconds=interval), interval=interval, repeat=None
        )
    except JobRunning:
        # it is clearing right now; its next run is scheduled when it ends
        pass


def _put_off(orm_job, interval):
    """
    Whether the clearing job's next run was moved further off than its interval
    (through the tasks API, say), which would stop clearing until then.
    """
    scheduled = aware_utc(orm_job.scheduled_time)
    if scheduled is None:
        return False
    return scheduled > timezone.now() + timedelta(seconds=interval + 60)


def _clear_job_under_old_id(job_storage):
    """Clear the clearing job 1.0.0 scheduled under its old id, if it is there."""
    try:
        job_storage.get_orm_job(_RETENTION_JOB_ID_BEFORE)
    except JobNotFound:
        return
    job_storage.clear(job_id=_RETENTION_JOB_ID_BEFORE, force=True)
