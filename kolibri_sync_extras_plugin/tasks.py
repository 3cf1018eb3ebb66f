"""
The Kolibri task that runs one deferred sync stage, and how it is enqueued.

Kolibri imports this module from every installed app to find registered tasks;
the task that clears old stage jobs lives in :mod:`.retention` and is found here.
"""

import logging

from kolibri.core.tasks.constants import Priority
from kolibri.core.tasks.decorators import register_task
from kolibri.core.tasks.exceptions import JobNotFound
from kolibri.core.tasks.job import JobStatus
from kolibri.core.tasks.job import State
from kolibri.core.tasks.permissions import IsAdminForJob
from morango.constants import transfer_statuses

from .context import BackgroundSessionContext
from .errors import StageNoLongerAwaited
from .jobs import FINISHED_JOB_STATES
from .jobs import SYNC_EXTRAS_QUEUE
from .jobs import job_id_for
from .jobs import settle_stage
from .progress import StageProgress
from .retention import clear_finished_stage_jobs
from .runner import awaited_transfer_session
from .runner import run_stage_operations
from .runner import stage_signal
from .wording import describe
from .wording import describe_job
from .wording import facility_label
from .writer_lock import one_writer_at_a_time

logger = logging.getLogger(__name__)

__all__ = [
    "clear_finished_stage_jobs",
    "run_background_stage",
    "stage_job_request",
    "enqueue_stage_job",
]


def background_stage_status(job):
    """
    What Kolibri's task list says about a background stage: a client is polling
    for it, which is why it runs at high priority.

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
    # the jobs name facilities and sync sessions: only their admins may see them
    permission_classes=[IsAdminForJob],
)
@one_writer_at_a_time
def run_background_stage(
    transfer_session_id, stage, request_data=None, capabilities=None
):
    """
    Run one server-side stage of a transfer session, then settle its status.

    The stage must be the one the transfer session is waiting on; otherwise the job
    ends without touching any data. A failing stage is settled as ERRORED (so the
    polling client stops with an error) and the exception fails the job.

    :param transfer_session_id: The transfer session's id
    :param stage: A ``transfer_stages`` constant
    :param request_data: See :class:`~.context.RecordedRequest`
    :param capabilities: The capabilities the client advertised
    :return: A summary for the job's result
    :rtype: dict
    """
    progress = StageProgress(stage)
    try:
        transfer_session = awaited_transfer_session(transfer_session_id, stage)
    except StageNoLongerAwaited as e:
        logger.warning("Background stage %s not run: %s", stage, e)
        progress.not_run(str(e))
        return {"stage": stage, "ran": False, "reason": str(e)}

    context = BackgroundSessionContext(
        transfer_session, request_data=request_data, capabilities=capabilities
    )
    signal = stage_signal(stage)
    records = progress.start(context)
    logger.info(
        "Stage %s of transfer session %s started in the background (records: %s)",
        stage,
        transfer_session_id,
        _count_or_unknown(records),
    )
    try:
        with progress.counting():
            run_stage_operations(context, stage)
    except Exception as e:
        logger.exception(
            "Background stage %s of transfer session %s failed after %.2fs "
            "(records: %s)",
            stage,
            transfer_session_id,
            progress.duration,
            _count_or_unknown(records),
        )
        progress.fail(e)
        settle_stage(transfer_session_id, stage, transfer_statuses.ERRORED)
        context.transfer_session.refresh_from_db()
        context.error = e
        signal.completed.fire(context=context)
        raise

    settle_stage(transfer_session_id, stage, transfer_statuses.COMPLETED)
    context.transfer_session.refresh_from_db()
    signal.completed.fire(context=context)
    records = progress.finish(context)
    duration = progress.duration
    logger.info(
        "Stage %s of transfer session %s completed in the background in %.2fs "
        "(records: %s)",
        stage,
        transfer_session_id,
        duration,
        _count_or_unknown(records),
    )
    return {
        "stage": stage,
        "ran": True,
        "duration": round(duration, 3),
        "records": records,
    }


def _count_or_unknown(records):
    return "unknown" if records is None else records


def _hex_or_none(value):
    return getattr(value, "hex", value)


def _job_metadata(context):
    """
    What Kolibri's task list shows about a background stage.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: dict
    """
    from kolibri.core.auth.models import Facility
    from kolibri.core.auth.sync_event_hook_utils import get_dataset_id

    dataset_id = get_dataset_id(context)
    facility = (
        Facility.objects.filter(dataset_id=dataset_id).values("id", "name").first()
        or {}
    )
    metadata = {
        "type": "SYNC_BACKGROUND_STAGE",
        "stage": context.stage,
        "direction": "push" if context.is_push else "pull",
        "transfer_session_id": context.transfer_session.id,
        "sync_session_id": context.sync_session.id,
        "dataset_id": dataset_id,
        "facility_id": facility.get("id"),
        "facility_name": facility.get("name"),
        "client_instance_id": _hex_or_none(context.sync_session.client_instance_id),
    }
    # the tasks API shows no status_fn text, so the job carries its own
    metadata["status_text"] = describe(metadata, State.QUEUED)
    return metadata


def _request_data_for_stage(context):
    """
    :return: The parts of the client's request data the stage will read in the job
    :rtype: dict
    """
    data = getattr(context.request, "data", None) or {}
    return {key: data[key] for key in ("client_fsic",) if key in data}


def stage_job_request(context):
    """
    The arguments to enqueue the job for the context's current stage with.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: dict
    """
    metadata = _job_metadata(context)
    return dict(
        job_id=job_id_for(context.transfer_session.id, context.stage),
        facility_id=metadata["facility_id"],
        extra_metadata=metadata,
        kwargs=dict(
            transfer_session_id=context.transfer_session.id,
            stage=context.stage,
            request_data=_request_data_for_stage(context),
            capabilities=sorted(context.capabilities),
        ),
    )


def enqueue_stage_job(job_request):
    """
    Enqueue the stage job unless the job serving that stage is already waiting or
    running. A finished job with the same id is replaced: that is a new attempt.

    :param job_request: See :func:`stage_job_request`
    :return: Whether a job was enqueued
    :rtype: bool
    """
    from kolibri.core.tasks.main import job_storage

    try:
        existing = job_storage.get_job(job_request["job_id"])
    except JobNotFound:
        existing = None
    if existing is not None and existing.state not in FINISHED_JOB_STATES:
        return False
    run_background_stage.enqueue(**job_request)
    return True
