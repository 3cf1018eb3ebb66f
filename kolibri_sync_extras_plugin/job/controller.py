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

from ..conflicts import is_transient_database_error
from ..errors import BackgroundStageError
from ..errors import StageNoLongerAwaited
from ..stages import stage_middleware

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_STAGE_ATTEMPTS",
    "awaited_transfer_session",
    "run_stage_operations",
]

#: How often a stage that morango asks to retry (a transaction isolation conflict
#: returns PENDING) is tried again in the same job before the stage fails.
MAX_STAGE_ATTEMPTS = 10
_RETRY_DELAY_SECONDS = 0.5


def awaited_transfer_session(transfer_session_id, stage):
    """
    :return: The transfer session, if it is active and still waiting on ``stage``
    :rtype: TransferSession
    :raises StageNoLongerAwaited: otherwise, saying why (without the session's id,
        which the job's result would keep, see :mod:`~kolibri_sync_extras_plugin.stage_status`)
    """
    if not transfer_session_id:
        # a job finds its session among the open ones (see stage_status)
        raise StageNoLongerAwaited("the transfer session was closed, or is gone")
    transfer_session = TransferSession.objects.filter(id=transfer_session_id).first()
    if transfer_session is None:
        raise StageNoLongerAwaited("the transfer session no longer exists")
    if not transfer_session.active:
        raise StageNoLongerAwaited("the transfer session was closed")
    if (
        transfer_session.transfer_stage != stage
        or transfer_session.transfer_stage_status
        not in transfer_statuses.IN_PROGRESS_STATES
    ):
        raise StageNoLongerAwaited(
            "the transfer session is at {}:{}, not waiting on {}".format(
                transfer_session.transfer_stage,
                transfer_session.transfer_stage_status,
                stage,
            )
        )
    return transfer_session


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
