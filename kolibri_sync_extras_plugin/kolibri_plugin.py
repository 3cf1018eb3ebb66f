"""
The plugin's entry point for Kolibri.

Kolibri imports this module before Django is configured, so it only names modules
and declares hooks; everything that touches Django or morango is imported when a
hook is first called.
"""

from kolibri.core.auth.hooks import FacilityDataSyncHook
from kolibri.core.tasks.hooks import JobHook
from kolibri.plugins import KolibriPluginBase
from kolibri.plugins.hooks import register_hook


class SyncExtrasPlugin(KolibriPluginBase):
    """Runs configured server-side sync stages in Kolibri background jobs."""

    kolibri_options = "options"


@register_hook
class BackgroundStageSyncHook(FacilityDataSyncHook):
    """Offers the plugin's operations to every stage of every sync; each decides."""

    def get_sync_operations(self, context):
        """
        :type context: morango.sync.context.SessionContext
        :rtype: list
        """
        from .operations import BackgroundStageOperation
        from .operations import CloseSupersededTransfersOperation
        from .operations import DeserializeLeftoversOperation
        from .operations import PiecewiseDeserializeOperation

        # operations of equal priority run in this order: pieces before leftovers
        return [
            BackgroundStageOperation(),
            PiecewiseDeserializeOperation(),
            DeserializeLeftoversOperation(),
            CloseSupersededTransfersOperation(),
        ]


@register_hook
class BackgroundStageJobHook(JobHook):
    """Settles a background stage when job storage finishes or drops its job."""

    def schedule(self, job, orm_job):
        pass

    def update(self, job, orm_job, state=None, **kwargs):
        from .jobs import RUN_STAGE_TASK
        from .jobs import settle_from_job

        if state is None or job.func != RUN_STAGE_TASK:
            return
        settle_from_job(job, state)

    def clear(self, job, orm_job):
        from .jobs import FINISHED_JOB_STATES
        from .jobs import RUN_STAGE_TASK
        from .jobs import settle_from_job

        if job.func != RUN_STAGE_TASK:
            return
        # a job cleared before it finished will never settle its stage
        settle_from_job(job, job.state if job.state in FINISHED_JOB_STATES else None)
