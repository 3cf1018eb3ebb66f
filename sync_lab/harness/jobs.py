"""
The plugin's background stage jobs on a server, as the plugin's own status report
(:func:`kolibri_sync_extras_plugin.status.report_background_stages`, the data of
``kolibri manage sync_extras_status --json``) describes them: the lab reads job
storage through it, and reads the rows themselves only for what a report leaves
out, the process that reserved a PENDING job (:func:`pending_stage_jobs`).

:func:`stage_jobs`, :func:`pending_stage_jobs`, :func:`settled_stage_jobs` and
:func:`stage_job_in_state` run inside the server instance (through
:meth:`~sync_lab.harness.instances.KolibriInstance.call`); the other functions run
in the lab and ask the instance. Waiting inside one process that reads job storage
between short sleeps costs next to nothing and sees a change within a fraction of
a second, where starting a Kolibri process per look takes seconds and CPU from the
very jobs being waited for.
"""

import time

from .instances import InstanceError

__all__ = [
    "FINISHED_STATES",
    "stage_jobs",
    "list_stage_jobs",
    "pending_stage_jobs",
    "list_pending_stage_jobs",
    "wait_for_stage_jobs",
    "wait_for_stage_job",
]

#: Job states after which a job does not change any more (Kolibri's ``State``).
FINISHED_STATES = frozenset(("COMPLETED", "FAILED", "CANCELED"))


def stage_jobs():
    """
    The plugin's stage jobs in this instance's job storage, oldest first, each as
    :func:`~kolibri_sync_extras_plugin.status.report_as_dict` gives its report:
    ``job_id``, ``job_state``, ``direction``, ``stage``, ``transfer_session_id``,
    ``worker_process``, ``started_at``, ``finished_at``, ``detail`` (a failed
    job's error) and the rest of
    :class:`~kolibri_sync_extras_plugin.status.StageReport`.

    :rtype: list
    """
    from kolibri_sync_extras_plugin.admin.status import report_as_dict
    from kolibri_sync_extras_plugin.admin.status import report_background_stages

    return [report_as_dict(r) for r in report_background_stages() if r.job_id]


def list_stage_jobs(instance):
    """
    :type instance: sync_lab.harness.instances.KolibriInstance
    :rtype: list
    """
    return instance.call(stage_jobs)


def pending_stage_jobs():
    """
    The plugin's stage jobs still PENDING in this instance's job storage: reserved
    by a request that has not queued them (yet). Each as its ``job_id``,
    ``stage``, ``transfer_session_id`` and the process that reserved it
    (``reserved_by``: its ``pid``, boot, pid namespace and start time, or
    ``None``).

    Once every request has ended, there should be none: the request queues its
    job as it ends, and a reservation whose process died is queued or removed by
    the client's next poll or the next count of the caps.

    :rtype: list
    """
    from kolibri.core.tasks.job import Job
    from kolibri.core.tasks.job import State

    from kolibri_sync_extras_plugin.compat import job_rows
    from kolibri_sync_extras_plugin.job.worker_identity import reserver_of
    from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
    from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE
    from kolibri_sync_extras_plugin.stage_status import transfer_session_of_job

    pending = []
    for row in job_rows(
        queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK, state=State.PENDING
    ):
        job = Job.from_json(row.saved_job)
        pending.append(
            {
                "job_id": row.id,
                "stage": (job.kwargs or {}).get("stage"),
                "transfer_session_id": transfer_session_of_job(job),
                "reserved_by": reserver_of(row.worker_extra),
            }
        )
    return pending


def list_pending_stage_jobs(instance):
    """
    :type instance: sync_lab.harness.instances.KolibriInstance
    :return: See :func:`pending_stage_jobs`
    :rtype: list
    """
    return instance.call(pending_stage_jobs)


def _settled(jobs, expected):
    finished = {
        (job["direction"], job["stage"])
        for job in jobs
        if job["job_state"] in FINISHED_STATES
    }
    unfinished = [job for job in jobs if job["job_state"] not in FINISHED_STATES]
    return expected <= finished and not unfinished


def settled_stage_jobs(expected, wait, interval=0.25):
    """
    Inside the server instance: wait until the stage jobs include a finished job
    for each expected ``[direction, stage]`` pair and none is waiting or running.

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


def stage_job_in_state(direction, stage, state, wait, interval=0.05, min_progress=0):
    """
    Inside the server instance: wait until a job of ``direction`` and ``stage`` is
    in ``state``, with at least ``min_progress`` done.

    :return: The job, or ``None`` if none was within ``wait`` seconds
    :rtype: dict|None
    """
    deadline = time.monotonic() + wait
    while time.monotonic() <= deadline:
        for job in stage_jobs():
            if (job["direction"], job["stage"], job["job_state"]) == (
                direction,
                stage,
                state,
            ) and (job["progress"] or 0) >= min_progress:
                return job
        time.sleep(interval)
    return None


def wait_for_stage_jobs(instance, expected, timeout=60):
    """
    Wait until the server's stage jobs include a finished job for each expected
    ``(direction, stage)`` pair, and none of the jobs is still waiting or running;
    give up after ``timeout`` seconds.

    :type instance: sync_lab.harness.instances.KolibriInstance
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


def wait_for_stage_job(
    instance, stage, direction, state="RUNNING", timeout=120, min_progress=0
):
    """
    Wait until a stage job of ``direction`` and ``stage`` is in ``state``, with at
    least ``min_progress`` done: a fault has to land while a particular job runs,
    or after it has committed part of its work.

    :type instance: sync_lab.harness.instances.KolibriInstance
    :return: The job, as :func:`stage_jobs` describes it
    :rtype: dict
    :raises InstanceError: if none is within ``timeout`` seconds
    """
    job = instance.call(
        stage_job_in_state,
        timeout=timeout + 300,
        direction=direction,
        stage=stage,
        state=state,
        wait=timeout,
        min_progress=min_progress,
    )
    if job is None:
        raise InstanceError(
            "{}: no {} {} job was {} with {} done within {}s; jobs: {}".format(
                instance.name,
                direction,
                stage,
                state,
                min_progress,
                timeout,
                list_stage_jobs(instance),
            )
        )
    return job
