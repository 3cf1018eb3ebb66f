"""
How a held stage's job is enqueued: its id, its arguments and what Kolibri's task
list shows about it, inserted into job storage once the request has ended (see
:mod:`.hooks`).

Neither the arguments nor the metadata name a transfer or sync session, or the
client's instance: the job finds its session by its own id (see
:func:`~kolibri_sync_extras_plugin.stage_status.transfer_session_of_job`), and
the client is counted by a digest of the identity its certificates prove (see
:mod:`.identity`).
"""

from kolibri.core.tasks.job import State

from ..compat import insert_job
from ..job.task_list import describe
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import job_id_for
from .identity import CLIENT_METADATA_KEY
from .identity import client_key

__all__ = ["enqueue_stage_job", "stage_job_request"]


#: The fields of a job request that Kolibri's ``_ready_job`` takes.
_JOB_FIELDS = ("job_id", "facility_id", "extra_metadata", "kwargs")


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
        "dataset_id": dataset_id,
        "facility_id": facility.get("id"),
        "facility_name": facility.get("name"),
        CLIENT_METADATA_KEY: client_key(context.sync_session),
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
    The arguments to enqueue the job for the context's current stage with, and the
    transfer session it serves (kept out of the job itself).

    :type context: morango.sync.context.LocalSessionContext
    :rtype: dict
    """
    metadata = _job_metadata(context)
    return dict(
        transfer_session_id=context.transfer_session.id,
        job_id=job_id_for(context.transfer_session.id, context.stage),
        facility_id=metadata["facility_id"],
        extra_metadata=metadata,
        kwargs=dict(
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
    job = run_background_stage._ready_job(
        **{field: job_request[field] for field in _JOB_FIELDS}
    )
    return insert_job(
        job, priority=run_background_stage.priority, queue=run_background_stage.queue
    )
