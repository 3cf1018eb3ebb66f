"""
The morango operation that holds a configured server stage for a background job,
or runs a small one in the request.
"""

import contextlib
import logging
import threading

from django.db import connection
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.constants.capabilities import ASYNC_OPERATIONS
from morango.sync.operations import LocalOperation

from ..config import runs_in_background
from ..conflicts import is_transient_database_error
from ..errors import RequestBudgetSpent
from ..piecewise.partition_locks import partitions_held_if_free
from ..piecewise.runner import pieces_within
from ..stages import stage_middleware
from ..writer_turn import turn_handed_over_after
from .enqueue import release_reserved_job
from .enqueue import stage_job_request
from .hooks import schedule_background_stage
from .inline import runs_inline
from .limits import reserve_within_limits

__all__ = ["BackgroundStageOperation"]

logger = logging.getLogger(__name__)


class BackgroundStageOperation(LocalOperation):
    """
    Holds a configured server stage as STARTED and hands it to a Kolibri job.

    Registered ahead of every other Kolibri sync operation (see ``priority``), so the
    stage's real work, Kolibri's own operations included, runs in the job. It passes
    (returns ``False``) unless all of these hold:

    - this instance is the server of the transfer,
    - the client advertised ``ASYNC_OPERATIONS``, so it will poll instead of waiting
      on the request (a client that cannot poll gets the stage inline, as stock),
    - the stage is configured to run in the background for this direction,
    - the context is not already the background job's own, nor the stage's run in
      the request (see below).

    A stage small enough to run in the request (see :mod:`.inline`) runs there,
    unless its writes would wait in the request for another stage's (see
    :func:`_free_to_write_for`): this operation invokes the stage's operations
    once, as morango's controller would, and returns what they return. If its
    pieces outlast :data:`REQUEST_PIECES_SECONDS` (a busy server), or another
    writer got in the way (morango
    answers PENDING after a transaction isolation conflict, or raises one of the
    errors :func:`~kolibri_sync_extras_plugin.conflicts.is_transient_database_error` accepts, as two
    serializations of the same rows on PostgreSQL do), the stage goes to a job
    after all, which retries it; stock Kolibri would leave it PENDING, and its
    client would poll a stage nothing runs again.

    Past the caps on unfinished stage jobs (see :mod:`.limits`) the stage is refused.

    STARTED, unlike PENDING, tells morango's controller not to invoke the stage again
    when the client repeats its request: the job settles the status itself.
    """

    priority = 1000

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: str|bool
        """
        self._assert(context.is_server)
        self._assert(not getattr(context, "in_background", False))
        self._assert(context.transfer_session is not None)
        self._assert(not _running_in_request(context))
        self._assert(ASYNC_OPERATIONS in context.capabilities)
        self._assert(runs_in_background(context.stage, context.is_push))
        if runs_inline(context):
            result = _run_in_request(context)
            if result is not None:
                return result
        job_request = stage_job_request(context)
        if reserve_within_limits(context, job_request):
            try:
                schedule_background_stage(job_request)
            except Exception:
                release_reserved_job(job_request["job_id"])
                raise
        return transfer_statuses.STARTED


#: How long the pieces of a stage run in the request may go on before the rest
#: goes to a job (see :func:`~kolibri_sync_extras_plugin.piecewise.runner.pieces_within`).
REQUEST_PIECES_SECONDS = 0.5

# per thread: the transfer session whose stage _run_in_request is invoking (a
# morango context takes no attributes of ours)
_stage_in_request = threading.local()


def _running_in_request(context):
    return (
        getattr(_stage_in_request, "transfer_session_id", None)
        == context.transfer_session.id
    )


def _run_in_request(context):
    """
    Invoke the stage's operations (this one passes) once, in the request.

    :return: Their result, or ``None`` if another writer got in the way and the
        stage should go to a job instead
    :rtype: str|None
    """
    with _free_to_write_for(context) as free:
        if not free:
            logger.info(
                "Stage %s of transfer session %s would wait in the request for "
                "another stage's writes; it goes to a background job",
                context.stage,
                context.transfer_session.id,
            )
            return None
        result, reason = _invoke_in_request(context)
    if result != transfer_statuses.PENDING:
        return result
    logger.info(
        "Stage %s of transfer session %s could not end in the request (%s); "
        "it goes to a background job",
        context.stage,
        context.transfer_session.id,
        reason,
    )
    return None


#: The stages whose work takes the facility's partition locks on PostgreSQL.
_PARTITION_LOCKING_STAGES = frozenset(
    (
        transfer_stages.SERIALIZING,
        transfer_stages.DEQUEUING,
        transfer_stages.DESERIALIZING,
    )
)


def _free_to_write_for(context):
    """
    Hold what the stage's writes would otherwise wait for in the request, if it is
    free: on SQLite the writers' turn (see
    :func:`~kolibri_sync_extras_plugin.writer_turn.turn_handed_over_after`); on
    PostgreSQL, for a stage whose work locks the facility's partitions, those
    partitions (see :func:`~kolibri_sync_extras_plugin.piecewise.partition_locks.partitions_held_if_free`).
    Yields whether the stage may run in the request.
    """
    if connection.vendor == "sqlite":
        return turn_handed_over_after()
    if context.stage in _PARTITION_LOCKING_STAGES:
        return partitions_held_if_free(context.filter)
    return contextlib.nullcontext(True)


def _invoke_in_request(context):
    """
    :return: The stage's result, and what to name if it is PENDING
    :rtype: tuple
    """
    _stage_in_request.transfer_session_id = context.transfer_session.id
    try:
        with pieces_within(REQUEST_PIECES_SECONDS):
            return stage_middleware(context.stage)(context), (
                "a transaction isolation conflict"
            )
    except RequestBudgetSpent as e:
        return transfer_statuses.PENDING, e
    except Exception as e:
        if not is_transient_database_error(e):
            raise
        return transfer_statuses.PENDING, e
    finally:
        _stage_in_request.transfer_session_id = None
