"""
How a held stage's job is enqueued: its id, its arguments and what Kolibri's task
list shows about it, inserted into job storage once the request has ended (see
:mod:`.hooks`).
"""

from kolibri.core.tasks.job import State

from ..compat import insert_job
from ..job.task_list import describe
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import job_id_for

__all__ = ["enqueue_stage_job", "stage_job_request"]


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
    Enqueue the stage's one job, unless a job with its id exists in any state.

    A stage of a transfer session gets exactly one job ever: a job that finished
    has settled its stage, or the poll settles it from the job (see
    :mod:`.poll`), so enqueueing it again could only run the stage twice. A new
    attempt is a new sync: morango gives it a new transfer session, so new job ids.
    The job row is inserted, never updated, so of two requests enqueueing at once
    exactly one enqueues.

    :param job_request: See :func:`stage_job_request`
    :return: Whether a job was enqueued
    :rtype: bool
    """
    from kolibri.core.tasks.registry import TaskRegistry

    # the registered task, by the name job storage knows it under
    run_background_stage = TaskRegistry[RUN_STAGE_TASK]
    job = run_background_stage._ready_job(**job_request)
    return insert_job(
        job, priority=run_background_stage.priority, queue=run_background_stage.queue
    )
