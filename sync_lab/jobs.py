"""
The plugin's background stage jobs on a server, read from Kolibri's job storage.

:func:`stage_jobs` runs inside the server instance (through
:meth:`~sync_lab.instances.KolibriInstance.call`); the other functions run in the
lab and ask the instance.
"""

import time
from datetime import timezone as _tz

__all__ = [
    "FINISHED_STATES",
    "stage_jobs",
    "list_stage_jobs",
    "settled_stage_jobs",
    "wait_for_stage_jobs",
]

#: Job states after which a job does not change any more (Kolibri's ``State``).
FINISHED_STATES = frozenset(("COMPLETED", "FAILED", "CANCELED"))


def _epoch(value):
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_tz.utc)
    return value.timestamp()


def stage_jobs(transfer_session_id=None):
    """
    The plugin's stage jobs in this instance's job storage, oldest first.

    Each is a dict with the job's ``job_id``, ``state``, ``stage``, ``direction``,
    ``transfer_session_id``, ``facility_id``, its ``result`` and ``exception``, and
    ``scheduled``: when it was enqueued, as a Unix time (Kolibri 0.19 leaves the
    job table's created and updated times empty).

    :param transfer_session_id: Only the jobs of this transfer session
    :rtype: list
    """
    from kolibri.core.tasks.main import job_storage

    from kolibri_sync_extras_plugin.compat import job_rows
    from kolibri_sync_extras_plugin.jobs import RUN_STAGE_TASK

    scheduled = {row.id: row.scheduled_time for row in job_rows(func=RUN_STAGE_TASK)}
    jobs = []
    for job in job_storage.filter_jobs(func=RUN_STAGE_TASK):
        metadata = job.extra_metadata or {}
        kwargs = job.kwargs or {}
        if (
            transfer_session_id is not None
            and kwargs.get("transfer_session_id") != transfer_session_id
        ):
            continue
        jobs.append(
            {
                "job_id": job.job_id,
                "state": job.state,
                "stage": kwargs.get("stage", metadata.get("stage")),
                "direction": metadata.get("direction"),
                "transfer_session_id": kwargs.get("transfer_session_id"),
                "sync_session_id": metadata.get("sync_session_id"),
                "facility_id": metadata.get("facility_id") or job.facility_id,
                "result": job.result,
                "exception": job.exception,
                "scheduled": _epoch(scheduled.get(job.job_id)),
            }
        )
    jobs.sort(key=lambda job: (job["scheduled"] or 0, job["job_id"]))
    return jobs


def list_stage_jobs(instance, transfer_session_id=None):
    """
    :type instance: sync_lab.instances.KolibriInstance
    :rtype: list
    """
    return instance.call(stage_jobs, transfer_session_id=transfer_session_id)


def _settled(jobs, expected):
    finished = {
        (job["direction"], job["stage"])
        for job in jobs
        if job["state"] in FINISHED_STATES
    }
    unfinished = [job for job in jobs if job["state"] not in FINISHED_STATES]
    return expected <= finished and not unfinished


def settled_stage_jobs(expected, wait, interval=0.25):
    """
    Inside the server instance: wait until the stage jobs include a finished job
    for each expected ``(direction, stage)`` pair and none is waiting or running.

    Waiting in one process that reads job storage between short sleeps costs next
    to nothing, where starting a Kolibri process per look would take CPU from the
    very jobs being waited for.

    :param expected: ``[direction, stage]`` pairs
    :param wait: Seconds to wait at most
    :return: The jobs, as they were at the end of the wait
    :rtype: list
    """
    expected = {tuple(pair) for pair in expected}
    deadline = time.monotonic() + wait
    while True:
        jobs = stage_jobs()
        if _settled(jobs, expected) or time.monotonic() > deadline:
            return jobs
        time.sleep(interval)


def wait_for_stage_jobs(instance, expected, timeout=60):
    """
    Wait until the server's stage jobs include a finished job for each expected
    ``(direction, stage)`` pair, and none of the jobs is still waiting or running;
    give up after ``timeout`` seconds.

    :type instance: sync_lab.instances.KolibriInstance
    :param expected: ``(direction, stage)`` pairs, e.g. ``[("push", "cleanup")]``
    :return: The jobs, as they were at the end of the wait
    :rtype: list
    """
    return instance.call(
        settled_stage_jobs,
        timeout=timeout + 300,
        expected=sorted(list(pair) for pair in expected),
        wait=timeout,
    )
