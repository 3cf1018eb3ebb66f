"""
The Kolibri task that runs one deferred sync stage.

Kolibri imports this module from every installed app to find registered tasks.
"""

import logging
import time

from django.db import IntegrityError
from django.db import OperationalError
from kolibri.core.tasks.constants import Priority
from kolibri.core.tasks.decorators import register_task
from kolibri.core.tasks.job import JobStatus
from kolibri.core.tasks.permissions import IsAdminForJob
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .context import BackgroundSessionContext
from .errors import BackgroundStageError
from .errors import StageNoLongerAwaited
from .jobs import settle_stage
from .progress import StageProgress
from .progress import describe_job

logger = logging.getLogger(__name__)

SYNC_EXTRAS_QUEUE = "sync_extras"

#: How often a stage that morango asks to retry (a transaction isolation conflict
#: returns PENDING) is tried again in the same job before the stage fails.
MAX_STAGE_ATTEMPTS = 10
_RETRY_DELAY_SECONDS = 0.5


def _awaited_transfer_session(transfer_session_id, stage):
    """
    :return: The transfer session, if it is active and still waiting on ``stage``
    :rtype: TransferSession
    :raises StageNoLongerAwaited: otherwise, saying why
    """
    transfer_session = TransferSession.objects.filter(id=transfer_session_id).first()
    if transfer_session is None:
        raise StageNoLongerAwaited(
            "transfer session {} no longer exists".format(transfer_session_id)
        )
    if not transfer_session.active:
        raise StageNoLongerAwaited(
            "transfer session {} was closed".format(transfer_session_id)
        )
    if (
        transfer_session.transfer_stage != stage
        or transfer_session.transfer_stage_status
        not in transfer_statuses.IN_PROGRESS_STATES
    ):
        raise StageNoLongerAwaited(
            "transfer session {} is at {}:{}, not waiting on {}".format(
                transfer_session_id,
                transfer_session.transfer_stage,
                transfer_session.transfer_stage_status,
                stage,
            )
        )
    return transfer_session


def _stage_middleware(stage):
    """
    :return: morango's operations for ``stage``, as the controller would invoke them
    :rtype: morango.registry.SessionMiddlewareOperations
    """
    from morango.registry import session_middleware

    return next(m for m in session_middleware if m.related_stage == stage)


def _stage_signal(stage):
    """
    :return: The signal group morango's server controller fires for ``stage``, which
        Kolibri listens to (cleanup's ``completed`` runs its post-transfer hooks)
    """
    from morango.api.viewsets import session_controller

    return getattr(session_controller.signals, stage)


def is_transient_database_error(error):
    """
    Whether ``error`` only says that another writer got in the way: SQLite's single
    write lock was busy, PostgreSQL could not serialize concurrent transactions, or
    a concurrent transaction on PostgreSQL inserted the same row first (see
    :func:`_is_concurrent_insert`). The stage's transaction was rolled back, so
    running the stage again is safe.

    :type error: BaseException
    :rtype: bool
    """
    from morango.sync.operations import DBBackend

    if isinstance(error, IntegrityError):
        return _is_concurrent_insert(error)
    if not isinstance(error, OperationalError):
        return False
    return DBBackend._is_transaction_isolation_error(error) or (
        "database is locked" in str(error)
    )


def _is_concurrent_insert(error):
    """
    Whether an ``IntegrityError`` is PostgreSQL's unique violation. morango
    serializes in a repeatable-read transaction whose snapshot is taken before it
    waits for the partition lock, so when two clients pull at once the second
    serializer inserts store records the first has just committed. Run again, the
    stage sees them. SQLite takes its write lock before reading, so there a unique
    violation is a real one.

    :type error: django.db.IntegrityError
    :rtype: bool
    """
    try:
        from psycopg2.errors import UniqueViolation
    except ImportError:
        return False
    return any(
        isinstance(e, UniqueViolation)
        for e in (error, getattr(error, "__cause__", None))
    )


def _run_stage_operations(context, stage):
    """
    Invoke the stage's operations until they report it complete, retrying the
    PENDING that morango returns after a transaction isolation conflict and the
    transient database errors it lets through.
    """
    middleware = _stage_middleware(stage)
    for attempt in range(1, MAX_STAGE_ATTEMPTS + 1):
        try:
            result = middleware(context)
        except (OperationalError, IntegrityError) as e:
            if not is_transient_database_error(e) or attempt == MAX_STAGE_ATTEMPTS:
                raise
            logger.warning(
                "Stage %s of transfer session %s met a busy database (%s); "
                "trying again (attempt %d of %d)",
                stage,
                context.transfer_session.id,
                e,
                attempt + 1,
                MAX_STAGE_ATTEMPTS,
            )
            time.sleep(_RETRY_DELAY_SECONDS * attempt)
            continue
        if result == transfer_statuses.COMPLETED:
            return
        if result != transfer_statuses.PENDING:
            raise BackgroundStageError(
                "stage {} ended {} in the background".format(stage, result)
            )
        time.sleep(_RETRY_DELAY_SECONDS * attempt)
    raise BackgroundStageError(
        "stage {} was still pending after {} attempts".format(stage, MAX_STAGE_ATTEMPTS)
    )


def background_stage_status(job):
    """
    What Kolibri's task list says about a background stage: a client is polling
    for it, which is why it runs at high priority.

    :type job: kolibri.core.tasks.job.Job
    :rtype: JobStatus
    """
    metadata = job.extra_metadata
    facility = metadata.get("facility_name") or metadata.get("dataset_id") or "facility"
    return JobStatus(
        title="Sync of {} ({})".format(facility, metadata.get("direction", "sync")),
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
        transfer_session = _awaited_transfer_session(transfer_session_id, stage)
    except StageNoLongerAwaited as e:
        logger.warning("Background stage %s not run: %s", stage, e)
        progress.not_run(str(e))
        return {"stage": stage, "ran": False, "reason": str(e)}

    context = BackgroundSessionContext(
        transfer_session, request_data=request_data, capabilities=capabilities
    )
    signal = _stage_signal(stage)
    records = progress.start(context)
    logger.info(
        "Stage %s of transfer session %s started in the background (records: %s)",
        stage,
        transfer_session_id,
        _count_or_unknown(records),
    )
    try:
        with progress.counting():
            _run_stage_operations(context, stage)
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
