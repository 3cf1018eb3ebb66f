"""
A backlog of stage jobs waiting for the writers' turn, and what the lab measures
beside it: how late one of Kolibri's own jobs finishes, and how often the waiting
jobs are run while they wait.

Every function here runs inside the server instance (see
:meth:`~sync_lab.harness.instances.KolibriInstance.call`): one process that reads
job storage between short sleeps sees each change within a fraction of a second,
where starting a Kolibri process per look takes seconds and CPU from the workers
being measured.
"""

import time

__all__ = [
    "time_a_kolibri_job",
    "count_waiting_stage_runs",
    "wait_for_backlog_to_drain",
]

#: Job states after which a job does not change any more (Kolibri's ``State``).
_FINISHED_STATES = ("COMPLETED", "FAILED", "CANCELED")


def time_a_kolibri_job(wait, interval=0.05):
    """
    Queue one of Kolibri's own regular-priority jobs (the clean-up of streamed
    content files) and time it from enqueue until it finishes.

    :param wait: Seconds to wait at most
    :return: ``{"state", "seconds"}``: the job's state at the end, and the seconds
        from enqueue to then
    :rtype: dict
    """
    from kolibri.core.tasks.main import job_storage

    from .flood import enqueue_kolibri_job

    started = time.monotonic()
    job_id = enqueue_kolibri_job()
    while True:
        state = job_storage.get_orm_job(job_id).state
        seconds = time.monotonic() - started
        if state in _FINISHED_STATES or seconds > wait:
            return {"state": state, "seconds": round(seconds, 2)}
        time.sleep(interval)


def _scheduled_times():
    from kolibri_sync_extras_plugin.compat import job_rows
    from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
    from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE

    return {
        row.id: row.scheduled_time
        for row in job_rows(queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK)
    }


def count_waiting_stage_runs(seconds, interval=0.05):
    """
    Count how many times the stage jobs were run over ``seconds``: a job that
    found the writers' turn taken is queued again with a new scheduled time, so
    each new scheduled time seen is one run. A job is run at most once per
    ``interval`` (Kolibri's job checker looks every 0.2 s), so none is missed.

    :return: ``{"runs", "seconds", "jobs"}``: the runs, the window, and how many
        stage jobs there were
    :rtype: dict
    """
    last = _scheduled_times()
    runs = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = _scheduled_times()
        runs += sum(1 for job_id, at in now.items() if last.get(job_id, at) != at)
        last.update(now)
    return {"runs": runs, "seconds": seconds, "jobs": len(last)}


def wait_for_backlog_to_drain(transfer_session_ids, wait, interval=0.25):
    """
    Wait until the stage job of every transfer session has finished.

    :param wait: Seconds to wait at most
    :return: ``{"seconds", "jobs"}``: how long it took, and for each transfer
        session its job's state, whether it ran its stage, and the stage's status
    :rtype: dict
    """
    from kolibri.core.tasks.exceptions import JobNotFound
    from kolibri.core.tasks.main import job_storage
    from morango.constants import transfer_stages
    from morango.models.core import TransferSession

    from kolibri_sync_extras_plugin.stage_status import has_run
    from kolibri_sync_extras_plugin.stage_status import job_id_for

    started = time.monotonic()
    while True:
        jobs = {}
        for transfer_session_id in transfer_session_ids:
            try:
                job = job_storage.get_job(
                    job_id_for(transfer_session_id, transfer_stages.SERIALIZING)
                )
            except JobNotFound:
                jobs[transfer_session_id] = {"state": None, "ran": False}
                continue
            jobs[transfer_session_id] = {
                "state": job.state,
                "ran": job.state == "COMPLETED" and has_run(job.result),
            }
        seconds = time.monotonic() - started
        finished = all(job["state"] in _FINISHED_STATES for job in jobs.values())
        if finished or seconds > wait:
            break
        time.sleep(interval)
    statuses = dict(
        TransferSession.objects.filter(id__in=transfer_session_ids).values_list(
            "id", "transfer_stage_status"
        )
    )
    for transfer_session_id, job in jobs.items():
        job["stage_status"] = statuses.get(transfer_session_id)
    return {"seconds": round(seconds, 2), "jobs": jobs}
