"""
Letting go of every background stage, before the plugin is disabled.

Once the plugin is disabled its task is no longer registered, and Kolibri's tasks
API then lists the jobs left in job storage, kwargs and metadata included, to
anyone who asks; and nothing would ever settle the stages those jobs served, so
their clients would poll until they give up. Releasing first ends each held stage
as ERRORED (its client stops with an error and syncs again later, inline) and
clears the plugin's jobs.
"""

import logging

from ..stage_status import SYNC_EXTRAS_QUEUE
from ..stage_status import error_held_stages

logger = logging.getLogger(__name__)

__all__ = ["release_background_stages"]


def release_background_stages():
    """
    End every stage the plugin holds as ERRORED and clear every job of its queue.

    A job still running
    in a worker goes on until its stage's work is done, but can no longer settle
    the stage; stop Kolibri first to stop it.

    :return: How many stages were ended, and how many jobs cleared
    :rtype: tuple
    """
    from kolibri.core.tasks.main import job_storage

    ended = error_held_stages()
    jobs = job_storage.filter_jobs(queue=SYNC_EXTRAS_QUEUE)
    job_storage.clear(queue=SYNC_EXTRAS_QUEUE, force=True)
    logger.info(
        "Released the background stages: %d stage(s) ended as errored, %d job(s) "
        "cleared",
        ended,
        len(jobs),
    )
    return ended, len(jobs)
