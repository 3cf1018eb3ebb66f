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

from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .jobs import SYNC_EXTRAS_QUEUE
from .jobs import settle_stage

logger = logging.getLogger(__name__)

__all__ = ["release_background_stages"]


def release_background_stages():
    """
    End every stage the plugin holds as ERRORED and clear every job of its queue.

    A stage is held when this instance is the server of its active transfer
    session and it shows STARTED: morango's own server operations finish a stage
    within the request, so only the plugin leaves one STARTED. A job still running
    in a worker goes on until its stage's work is done, but can no longer settle
    the stage; stop Kolibri first to stop it.

    :return: How many stages were ended, and how many jobs cleared
    :rtype: tuple
    """
    from kolibri.core.tasks.main import job_storage

    held = TransferSession.objects.filter(
        active=True,
        sync_session__is_server=True,
        transfer_stage_status=transfer_statuses.STARTED,
    ).values_list("id", "transfer_stage")
    ended = sum(
        settle_stage(ts_id, stage, transfer_statuses.ERRORED) for ts_id, stage in held
    )
    jobs = job_storage.filter_jobs(queue=SYNC_EXTRAS_QUEUE)
    job_storage.clear(queue=SYNC_EXTRAS_QUEUE, force=True)
    logger.info(
        "Released the background stages: %d stage(s) ended as errored, %d job(s) "
        "cleared",
        ended,
        len(jobs),
    )
    return ended, len(jobs)
