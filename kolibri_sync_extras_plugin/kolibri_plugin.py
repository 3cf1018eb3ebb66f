"""
The plugin's entry point for Kolibri.

Kolibri imports this module before Django is configured, so it only names modules
and declares hooks; everything that touches Django or morango is imported when a
hook is first called.
"""

import logging

from kolibri.core.auth.hooks import FacilityDataSyncHook
from kolibri.plugins import KolibriPluginBase
from kolibri.plugins.hooks import register_hook

from .compat import JobHook

logger = logging.getLogger(__name__)


class SyncExtrasPlugin(KolibriPluginBase):
    """Runs configured server-side sync stages in Kolibri background jobs."""

    kolibri_options = "options"

    def disable(self):
        """
        ``kolibri plugin disable`` calls this: release the background stages first
        (see :mod:`.admin.disable`), since nothing can once the plugin's task is gone.
        That command does not set Django up, so this does, as Kolibri's own Django
        commands do. Disabling goes on if the release fails, with a message saying
        what to run instead.
        """
        import logging

        try:
            from django.apps import apps

            if not apps.ready:
                from kolibri.utils.main import initialize

                initialize(skip_update=True)

            from .admin.disable import release_background_stages

            release_background_stages()
        except Exception:
            logging.getLogger(__name__).exception(
                "Could not release the plugin's background stages; before "
                "disabling it, stop Kolibri and run "
                "`kolibri manage sync_extras_release`, or see the plugin's README"
            )
        super().disable()


@register_hook
class BackgroundStageSyncHook(FacilityDataSyncHook):
    """Offers the plugin's operations to every stage of every sync; each decides."""

    def get_sync_operations(self, context):
        """
        :type context: morango.sync.context.SessionContext
        :rtype: list
        """
        from .piecewise.operations import PiecewiseDeserializeOperation
        from .piecewise.operations import PiecewiseSerializeOperation
        from .recovery.leftovers import CloseSupersededTransfersOperation
        from .recovery.leftovers import DeserializeLeftoversOperation
        from .request.operation import BackgroundStageOperation

        # operations of equal priority run in this order: pieces before leftovers
        return [
            BackgroundStageOperation(),
            PiecewiseSerializeOperation(),
            PiecewiseDeserializeOperation(),
            DeserializeLeftoversOperation(),
            CloseSupersededTransfersOperation(),
        ]


def _settle_once_job_storage_commits(job, orm_job, job_state):
    """
    Settle the job's stage after job storage's transaction commits: Kolibri calls
    job hooks inside it, and on SQLite job storage is a file of its own, so writing
    the main database from there would hold one lock while waiting for the other.
    """
    from .compat import after_job_storage_commit
    from .stage_status import settle_from_job

    after_job_storage_commit(orm_job, lambda: settle_from_job(job, job_state))


@register_hook
class BackgroundStageJobHook(JobHook):
    """
    Settles a background stage when job storage finishes or drops its job, and
    keeps the clearing of old stage jobs scheduled.
    """

    def schedule(self, job, orm_job):
        from .admin.retention import schedule_retention
        from .stage_status import RUN_STAGE_TASK
        from .tasks import clear_finished_stage_jobs

        if job.func != RUN_STAGE_TASK:
            return
        # wherever stage jobs are queued, the job that clears them must be too; a
        # failure here must not fail the stage being queued
        try:
            schedule_retention(clear_finished_stage_jobs)
        except Exception:
            logger.exception("Could not schedule the clearing of old stage jobs")

    def update(self, job, orm_job, state=None, **kwargs):
        from kolibri.core.tasks.job import State

        from .job.worker_identity import record_current_worker
        from .stage_status import RUN_STAGE_TASK

        if state is None or job.func != RUN_STAGE_TASK:
            return
        if state == State.RUNNING:
            # called in the process that is about to run the job
            record_current_worker(job.job_id)
            return
        _settle_once_job_storage_commits(job, orm_job, state)

    def clear(self, job, orm_job):
        from .stage_status import FINISHED_JOB_STATES
        from .stage_status import RUN_STAGE_TASK

        if job.func != RUN_STAGE_TASK:
            return
        # a job cleared before it finished will never settle its stage
        _settle_once_job_storage_commits(
            job, orm_job, job.state if job.state in FINISHED_JOB_STATES else None
        )
