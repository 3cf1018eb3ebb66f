"""
The Kolibri tasks this plugin registers. Kolibri imports this module from every
installed app to find them, and job storage keeps each job's task by its dotted
path, so the two tasks stay here, named as they were in 1.0.0, and only hand over
to the modules that do the work (:mod:`.job.run`, :mod:`.admin.retention`).
"""

from kolibri.core.tasks.constants import Priority
from kolibri.core.tasks.decorators import register_task
from kolibri.core.tasks.job import JobStatus
from kolibri.core.tasks.permissions import IsAdminForJob
from kolibri.core.tasks.permissions import IsSuperAdmin

from .admin.retention import RETENTION_JOB_ID
from .admin.retention import RETENTION_QUEUE
from .job.run_claim import one_run_at_a_time
from .job.task_list import describe_job
from .job.task_list import facility_label
from .stage_status import SYNC_EXTRAS_QUEUE
from .writer_turn import one_writer_at_a_time

__all__ = ["clear_finished_stage_jobs", "run_background_stage"]


def background_stage_status(job):
    """
    What Kolibri's task list says about a background stage: a client is polling
    for it, which is why it runs at high priority (while it waits for its
    writer's turn, only the longest-waiting one does: see :mod:`.writer_turn`).

    :type job: kolibri.core.tasks.job.Job
    :rtype: JobStatus
    """
    metadata = job.extra_metadata
    return JobStatus(
        title="Sync of {} ({})".format(
            facility_label(metadata), metadata.get("direction", "sync")
        ),
        text=describe_job(job),
    )


@register_task(
    queue=SYNC_EXTRAS_QUEUE,
    priority=Priority.HIGH,
    status_fn=background_stage_status,
    track_progress=True,
    # the jobs name facilities and their progress: only their admins may see them
    permission_classes=[IsAdminForJob],
)
@one_writer_at_a_time
@one_run_at_a_time
def run_background_stage(
    stage, request_data=None, capabilities=None, transfer_session_id=None
):
    """
    Run one server-side stage of the transfer session this job serves (see
    :mod:`.job.run`). ``transfer_session_id`` is given only by jobs of 1.0.0.
    """
    from .job.run import run_stage_of_current_job
    from .poll_hold import stage_jobs_run_here

    stage_jobs_run_here()
    return run_stage_of_current_job(
        stage,
        request_data=request_data,
        capabilities=capabilities,
        transfer_session_id=transfer_session_id,
    )


@register_task(
    job_id=RETENTION_JOB_ID,
    queue=RETENTION_QUEUE,
    priority=Priority.REGULAR,
    # a task with no permission classes is open to every signed-in user of the
    # tasks API, who could reschedule it to the year 9999: only superusers may
    permission_classes=[IsSuperAdmin],
)
def clear_finished_stage_jobs():
    """Clear finished stage jobs past their retention (see :mod:`.admin.retention`)."""
    from .admin.retention import clear_expired_stage_jobs

    return clear_expired_stage_jobs()
