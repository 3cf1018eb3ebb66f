"""
The plugin's jobs in this process's job storage, and running them the way a
Kolibri worker does.
"""

import time

from kolibri.core.tasks.main import job_storage

from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE


def stage_jobs():
    """The plugin's jobs in Kolibri's job storage."""
    return job_storage.filter_jobs(queue=SYNC_EXTRAS_QUEUE)


def no_stage_jobs_after(seconds=1.0):
    """
    Whether the plugin still has no job once a request has had time to finish: an
    immediate look could miss a job enqueued at the end of the request.
    """
    time.sleep(seconds)
    return stage_jobs() == []


def queued_stage_jobs(expected=1, timeout=10):
    """
    Wait for the plugin's queued jobs: the server enqueues a stage's job once the
    request that asked for it has finished, which may be just after the client has
    read the response.
    """
    deadline = time.monotonic() + timeout
    while True:
        jobs = job_storage.filter_jobs(queue=SYNC_EXTRAS_QUEUE, state="QUEUED")
        if len(jobs) >= expected or time.monotonic() > deadline:
            return jobs
        time.sleep(0.05)


def run_stage_jobs(expected=1):
    """
    Run the plugin's queued jobs the way a Kolibri worker does (``Job.execute``:
    state changes, job hooks, failure recording), in this thread.

    :return: The jobs, as job storage holds them afterwards
    """
    ran = []
    for job in queued_stage_jobs(expected):
        job.execute()
        ran.append(job.job_id)
    return [job_storage.get_job(job_id) for job_id in ran]
