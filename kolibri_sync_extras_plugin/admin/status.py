"""
What the background is doing, read from the plugin's bookkeeping: the stage jobs in
Kolibri's job storage, and the transfer sessions waiting on a background stage.

It only reads; settling a stage that cannot finish is left to the job hook and to
the check on each client poll (:func:`kolibri_sync_extras_plugin.request.poll.check_background_stage`).
"""

import datetime
from collections import namedtuple

from django.utils import timezone
from kolibri.core.tasks.job import Job
from kolibri.core.tasks.job import State
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from ..compat import aware_utc
from ..compat import job_rows
from ..compat import parse_time
from ..config import get_stage_job_start_timeout
from ..job.task_list import describe_job
from ..request.poll import MISSING_JOB_GRACE_SECONDS
from ..request.poll import never_picked_up
from ..request.poll import stage_job_running
from ..request.poll import worker_is_gone
from ..stage_status import FINISHED_JOB_STATES
from ..stage_status import FIRST_ENQUEUED_KEY
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import SYNC_EXTRAS_QUEUE
from ..stage_status import job_id_for
from ..stage_status import open_sessions_by_job_id
from ..stage_status import stage_status_for_job_state

__all__ = [
    "STUCK",
    "ERRORED",
    "DEFAULT_STUCK_AFTER_SECONDS",
    "StageReport",
    "report_as_dict",
    "report_background_stages",
]

#: A stage that nothing will move on: no job serves it, its job's worker is gone,
#: or its job has been waiting or running for longer than allowed.
STUCK = "stuck"
#: A stage whose job failed or was cancelled, so the client's sync stopped with an error.
ERRORED = "errored"

#: How long a job may wait and run before it counts as stuck. Kolibri expects a job
#: that is not ``long_running`` to finish within ten minutes.
DEFAULT_STUCK_AFTER_SECONDS = 600

StageReport = namedtuple(
    "StageReport",
    (
        "transfer_session_id",
        "direction",
        "facility_id",
        "facility_name",
        "stage",
        "stage_status",
        "job_id",
        "job_state",
        "worker_process",
        "progress",
        "total_progress",
        "percentage",
        "status_text",
        "enqueued_at",
        "started_at",
        "finished_at",
        "age_seconds",
        "problem",
        "detail",
    ),
)
StageReport.__doc__ = """
One background stage of one transfer session, as far as job storage and the
transfer session tell.

``stage_status`` is the stage's status as the client sees it, or ``moved on``,
``closed`` or ``gone`` once the transfer session has left the stage. ``job_state``
is ``None`` when no job serves the stage; ``worker_process`` is the pid of the
process that last ran the job, as Kolibri noted it. ``age_seconds`` counts from when the job
was enqueued, or for a stage without a job from its transfer session's last
activity. ``problem`` is :data:`STUCK`, :data:`ERRORED` or ``None``, and ``detail``
says why (or why a job left its stage alone).
"""

_SESSION_FIELDS = (
    "id",
    "push",
    "active",
    "filter",
    "transfer_stage",
    "transfer_stage_status",
    "last_activity_timestamp",
)


def _seconds_between(earlier, later):
    if earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def _stage_status_seen(session, stage):
    if session is None:
        return "gone"
    if session["transfer_stage"] == stage:
        return session["transfer_stage_status"]
    if not session["active"]:
        return "closed"
    return "moved on"


def _last_error(job):
    """
    :return: The error a failed job ended with: the one the stage noted, else the
        last line of the traceback Kolibri stored, else the exception's name
    :rtype: str|None
    """
    if job.extra_metadata.get("error"):
        return job.extra_metadata["error"]
    lines = [line for line in (job.traceback or "").splitlines() if line.strip()]
    if lines:
        return lines[-1].strip()
    return job.exception


def _job_problem(job, orm_job, age, stuck_after, errors_since):
    """
    :return: ``(problem, detail)`` for a stage that has a job
    :rtype: tuple
    """
    if job.state in FINISHED_JOB_STATES:
        if stage_status_for_job_state(job.state) != transfer_statuses.ERRORED:
            return None, job.extra_metadata.get("not_run")
        detail = _last_error(job) or "job {}".format(job.state.lower())
        ended = parse_time(job.extra_metadata.get("finished_at"))
        ended = ended or orm_job.scheduled_time
        if errors_since is not None and ended is not None and ended < errors_since:
            return None, detail
        return ERRORED, detail
    if worker_is_gone(orm_job):
        return STUCK, "worker process {} is gone".format(orm_job.worker_process)
    if (
        job.state == State.QUEUED
        and age is not None
        and age > get_stage_job_start_timeout()
        and never_picked_up(orm_job)
        and not stage_job_running()
    ):
        return STUCK, (
            "no background worker has taken a stage job for {:.0f}s: start "
            "Kolibri's workers (kolibri start, or kolibri services)".format(age)
        )
    if age is not None and age > stuck_after:
        return STUCK, "job {} for {:.0f}s, over {:.0f}s".format(
            job.state, age, stuck_after
        )
    return None, None


def _job_reports(now, stuck_after, errors_since):
    orm_jobs = job_rows(queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK)
    jobs = [(Job.from_json(orm_job.saved_job), orm_job) for orm_job in orm_jobs]
    # a session is active at least until its last job was first enqueued
    enqueued = [
        parse_time(job.extra_metadata.get(FIRST_ENQUEUED_KEY))
        or aware_utc(orm_job.scheduled_time)
        for job, orm_job in jobs
    ]
    enqueued = [time for time in enqueued if time is not None]
    open_sessions = open_sessions_by_job_id(
        closed_since=min(enqueued) - datetime.timedelta(minutes=1) if enqueued else None
    )
    session_of_job = {
        job.job_id: job.kwargs.get("transfer_session_id")
        or open_sessions.get(job.job_id, (None, None))[0]
        for job, _ in jobs
    }
    session_ids = set(session_of_job.values()) - {None}
    sessions = {
        session["id"]: session
        for session in TransferSession.objects.filter(id__in=session_ids).values(
            *_SESSION_FIELDS
        )
    }
    for job, orm_job in jobs:
        metadata = job.extra_metadata
        transfer_session_id = session_of_job[job.job_id]
        stage = job.kwargs.get("stage")
        # a job waiting for the writers' turn is rescheduled each time it looks
        enqueued_at = (
            parse_time(metadata.get(FIRST_ENQUEUED_KEY)) or orm_job.scheduled_time
        )
        age = _seconds_between(enqueued_at, now)
        problem, detail = _job_problem(job, orm_job, age, stuck_after, errors_since)
        yield StageReport(
            transfer_session_id=transfer_session_id,
            direction=metadata.get("direction"),
            facility_id=job.facility_id or metadata.get("facility_id"),
            facility_name=metadata.get("facility_name"),
            stage=stage,
            stage_status=_stage_status_seen(sessions.get(transfer_session_id), stage),
            job_id=job.job_id,
            job_state=job.state,
            worker_process=orm_job.worker_process,
            progress=job.progress,
            total_progress=job.total_progress,
            percentage=job.percentage_progress,
            status_text=describe_job(job),
            enqueued_at=enqueued_at,
            started_at=parse_time(metadata.get("started_at")),
            finished_at=parse_time(metadata.get("finished_at")),
            age_seconds=age,
            problem=problem,
            detail=detail,
        )


def _facilities_by_dataset(dataset_ids):
    from kolibri.core.auth.models import Facility

    return {
        facility["dataset_id"]: facility
        for facility in Facility.objects.filter(dataset_id__in=dataset_ids).values(
            "id", "name", "dataset_id"
        )
    }


def _dataset_id(sync_filter):
    # Kolibri's partitions start with the facility's dataset id
    return sync_filter.split()[0].split(":")[0] if sync_filter else None


def _jobless_reports(now, job_ids):
    """
    Stages the plugin's operation handed to the background (it leaves them STARTED,
    where an inline stage shows PENDING while it runs) that no job serves.
    """
    sessions = [
        session
        for session in TransferSession.objects.filter(
            active=True,
            sync_session__is_server=True,
            transfer_stage_status=transfer_statuses.STARTED,
        ).values(*_SESSION_FIELDS)
        if job_id_for(session["id"], session["transfer_stage"]) not in job_ids
    ]
    facilities = _facilities_by_dataset(
        {_dataset_id(session["filter"]) for session in sessions}
    )
    for session in sessions:
        facility = facilities.get(_dataset_id(session["filter"]), {})
        idle = _seconds_between(session["last_activity_timestamp"], now)
        stuck = idle is not None and idle > MISSING_JOB_GRACE_SECONDS
        yield StageReport(
            transfer_session_id=session["id"],
            direction="push" if session["push"] else "pull",
            facility_id=facility.get("id"),
            facility_name=facility.get("name"),
            stage=session["transfer_stage"],
            stage_status=session["transfer_stage_status"],
            job_id=None,
            job_state=None,
            worker_process=None,
            progress=0,
            total_progress=0,
            percentage=0.0,
            status_text=None,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            age_seconds=idle,
            problem=STUCK if stuck else None,
            detail="no job in job storage",
        )


def report_as_dict(report):
    """
    A report with its times as ISO 8601 text, ready for JSON.

    :type report: StageReport
    :rtype: dict
    """
    data = report._asdict()
    for key in ("enqueued_at", "started_at", "finished_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return data


def report_background_stages(
    stuck_after=DEFAULT_STUCK_AFTER_SECONDS, errors_within=None, now=None
):
    """
    Every background stage the plugin knows of, oldest first.

    :param stuck_after: Seconds a job may wait and run before it counts as stuck
    :type stuck_after: float
    :param errors_within: If given, a failed or cancelled job counts as errored only
        if it ended within this many seconds; older ones are listed without a problem
    :type errors_within: float|None
    :param now: The time to measure ages against; defaults to now
    :type now: datetime.datetime|None
    :rtype: list[StageReport]
    """
    now = now or timezone.now()
    errors_since = (
        None
        if errors_within is None
        else now - datetime.timedelta(seconds=errors_within)
    )
    reports = list(_job_reports(now, stuck_after, errors_since))
    job_ids = {report.job_id for report in reports}
    reports.extend(_jobless_reports(now, job_ids))
    reports.sort(key=lambda report: -(report.age_seconds or 0.0))
    return reports
