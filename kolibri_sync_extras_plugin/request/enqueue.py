"""
How a held stage's job gets into job storage: its id, its arguments and what
Kolibri's task list shows about it.

A stage that passes the caps is reserved at once: its job is added PENDING, which
no worker runs, so every server process counts it from then on (see
:mod:`.limits`). Once the request that asked for the stage has ended (see
:mod:`.hooks`), the job is queued. A request whose process died in between leaves
its job PENDING: the client's next poll queues it, or else the next count of the
caps removes it and errors its stage (see :mod:`.poll` and
:func:`settle_abandoned_reservations`).

Neither the arguments nor the metadata name a transfer or sync session, or the
client's instance: the job finds its session by its own id (see
:func:`~kolibri_sync_extras_plugin.stage_status.transfer_session_of_job`), and
the client is counted by a digest of the identity its certificates prove (see
:mod:`.identity`).
"""

import functools
import logging

from kolibri.core.tasks.job import State

from ..compat import delete_reserved_job
from ..compat import insert_job
from ..compat import job_rows
from ..compat import queue_reserved_job
from ..compat import take_over_reserved_job
from ..job.task_list import describe
from ..job.worker_identity import current_identity
from ..job.worker_identity import is_gone
from ..job.worker_identity import reservation_extra
from ..job.worker_identity import reserver_of
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import SYNC_EXTRAS_QUEUE
from ..stage_status import error_abandoned_stage
from ..stage_status import job_id_for
from ..stage_status import transfer_session_of_job
from .identity import CLIENT_METADATA_KEY
from .identity import client_key

logger = logging.getLogger(__name__)

__all__ = [
    "enqueue_stage_job",
    "reserve_stage_job",
    "release_reserved_job",
    "settle_abandoned_reservations",
    "dataset_of",
    "stage_job_request",
]


#: The fields of a job request that Kolibri's ``_ready_job`` takes.
_JOB_FIELDS = ("job_id", "facility_id", "extra_metadata", "kwargs")


def _job_metadata(context):
    """
    What Kolibri's task list shows about a background stage.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: dict
    """
    from kolibri.core.auth.models import Facility

    dataset_id = dataset_of(context.sync_session)
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


def dataset_of(sync_session):
    """
    The facility dataset a sync session syncs, as Kolibri's ``get_dataset_id``
    finds it: the root of this side's certificate.

    :type sync_session: morango.models.core.SyncSession
    :rtype: str
    """
    if sync_session.is_server:
        return _root_of_certificate(sync_session.server_certificate_id)
    return _root_of_certificate(sync_session.client_certificate_id)


@functools.lru_cache(maxsize=1024)
def _root_of_certificate(certificate_id):
    """
    A certificate's parent is part of what its signature covers, and morango
    never saves a certificate again, so its root never changes: each stage
    request of a sync asks again, the chain is read once.
    """
    from morango.models.certificates import Certificate

    return Certificate.objects.get(id=certificate_id).get_root().id


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


def _ready_job(job_request):
    """:return: The registered task, and the job for ``job_request``"""
    from kolibri.core.tasks.registry import TaskRegistry

    # the registered task, by the name job storage knows it under
    run_background_stage = TaskRegistry[RUN_STAGE_TASK]
    job = run_background_stage._ready_job(
        **{field: job_request[field] for field in _JOB_FIELDS}
    )
    return run_background_stage, job


def reserve_stage_job(job_request):
    """
    Add the stage's job PENDING, reserved by this process, unless a job with its
    id exists; a job left PENDING by a process that has died is taken over.

    Called with the caps' server-wide lock held (see :mod:`.limits`).

    :param job_request: See :func:`stage_job_request`
    :return: Whether this process holds the reservation, and so queues the job
        when its request ends; ``False``: the stage has its job already
    :rtype: bool
    """
    task, job = _ready_job(job_request)
    mine = reservation_extra(current_identity())
    if insert_job(job, priority=task.priority, queue=task.queue, reserved_by=mine):
        return True
    [row] = job_rows(job_id=job.job_id) or [None]
    if row is None or row.state != State.PENDING or not _reserver_gone(row):
        return False
    return take_over_reserved_job(job.job_id, row.worker_extra, mine)


def _reserver_gone(row):
    return is_gone(reserver_of(row.worker_extra))


def enqueue_stage_job(job_request):
    """
    Queue the stage's one job: the job this process reserved, or, if none was
    reserved, a new one unless a job with its id exists in any state.

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
    if queue_reserved_job(job_request["job_id"]):
        return True
    task, job = _ready_job(job_request)
    return insert_job(job, priority=task.priority, queue=task.queue)


def release_reserved_job(job_id):
    """Remove a reserved job that will never be queued (its request failed)."""
    return delete_reserved_job(job_id)


def settle_abandoned_reservations():
    """
    Settle the stage jobs whose reserving process died before queueing them
    (uwsgi's ``harakiri``, the out-of-memory killer): each job is removed and its
    stage ended as errored. The client's request most likely failed with the
    process (nginx answers 502), and its sync stopped; an errored stage lets the
    next sync of the same transfer close the session at once (see
    :mod:`~kolibri_sync_extras_plugin.recovery.superseded`). A client that did get
    its answer and polls has its job queued by the poll instead (see
    :mod:`.poll`), which usually comes first. Reservations of processes that
    cannot be told dead from here (another host, another pid namespace) are left
    to their client's poll.

    :return: How many reservations were settled
    :rtype: int
    """
    from kolibri.core.tasks.job import Job

    settled = 0
    pending = job_rows(
        queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK, state=State.PENDING
    )
    for row in pending:
        if not _reserver_gone(row) or not delete_reserved_job(row.id):
            continue
        settled += 1
        job = Job.from_json(row.saved_job)
        stage = (job.kwargs or {}).get("stage")
        transfer_session_id = transfer_session_of_job(job)
        if transfer_session_id:
            error_abandoned_stage(transfer_session_id, stage)
        logger.warning(
            "Removed job %s of stage %s of transfer session %s: the server "
            "process that reserved it died before its request ended (killed or "
            "recycled mid-request?); the stage is errored and the client syncs "
            "again",
            row.id,
            stage,
            transfer_session_id,
        )
    return settled
