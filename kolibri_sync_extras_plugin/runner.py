"""
Running one server-side stage of a transfer session outside its HTTP request: the
stage's real operations (morango's and every Kolibri sync hook's), retried while
another writer holds the database, and the signal morango's server fires after it.
"""

import logging
import time

from django.db import IntegrityError
from django.db import OperationalError
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from .errors import BackgroundStageError
from .errors import StageNoLongerAwaited

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_STAGE_ATTEMPTS",
    "awaited_transfer_session",
    "is_transient_database_error",
    "run_stage_operations",
    "stage_middleware",
    "stage_signal",
]

#: How often a stage that morango asks to retry (a transaction isolation conflict
#: returns PENDING) is tried again in the same job before the stage fails.
MAX_STAGE_ATTEMPTS = 10
_RETRY_DELAY_SECONDS = 0.5


def awaited_transfer_session(transfer_session_id, stage):
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


def stage_middleware(stage):
    """
    :return: morango's operations for ``stage``, as the controller would invoke them
    :rtype: morango.registry.SessionMiddlewareOperations
    """
    from morango.registry import session_middleware

    return next(m for m in session_middleware if m.related_stage == stage)


def stage_signal(stage):
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


def run_stage_operations(context, stage):
    """
    Invoke the stage's operations until they report it complete, retrying the
    PENDING that morango returns after a transaction isolation conflict and the
    transient database errors it lets through.

    :type context: morango.sync.context.LocalSessionContext
    :raises BackgroundStageError: when the stage ends otherwise, or stays pending
    """
    middleware = stage_middleware(stage)
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
