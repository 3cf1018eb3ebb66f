"""
What a stage job does: run the one stage its transfer session waits on, report
progress, and settle the stage's status (through :mod:`kolibri_sync_extras_plugin.stage_status`).

The registered task that Kolibri's workers call is in :mod:`kolibri_sync_extras_plugin.tasks`, whose
dotted path job storage keeps.
"""

import logging

from ..errors import BackgroundStageError
from ..errors import StageNoLongerAwaited
from ..stage_status import complete_stage
from ..stage_status import error_stage
from ..stage_status import not_run_result
from ..stage_status import ran_result
from ..stages import stage_signal
from ..write_queue import transactions_begun_at_their_first_statement
from .context import BackgroundSessionContext
from .controller import awaited_transfer_session
from .controller import run_stage_operations
from .progress import StageProgress

logger = logging.getLogger(__name__)

__all__ = ["run_stage", "run_stage_of_current_job"]


def run_stage_of_current_job(
    stage, request_data=None, capabilities=None, transfer_session_id=None
):
    """
    Run the stage of the transfer session that the running Kolibri job serves.

    The job's kwargs name only the stage (see
    :mod:`~kolibri_sync_extras_plugin.stage_status`): its session is found by the
    job's id. A job enqueued by 1.0.0 still names its session.

    :return: See :func:`run_stage`
    :rtype: dict
    """
    if transfer_session_id is None:
        from kolibri.core.tasks.utils import get_current_job

        from ..stage_status import transfer_session_of_job

        job = get_current_job()
        if job is not None:
            transfer_session_id = transfer_session_of_job(job)
    return run_stage(
        transfer_session_id,
        stage,
        request_data=request_data,
        capabilities=capabilities,
    )


def run_stage(transfer_session_id, stage, request_data=None, capabilities=None):
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
        logger.warning(
            "Background stage %s of transfer session %s not run: %s",
            stage,
            transfer_session_id,
            e,
        )
        progress.not_run(str(e))
        return not_run_result(stage, str(e))

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
        message = _without_session_ids(
            "{}: {}".format(type(e).__name__, e), context.transfer_session
        )
        progress.fail(message)
        error_stage(transfer_session_id, stage)
        context.transfer_session.refresh_from_db()
        context.error = e
        _stage_ended(signal, context)
        # job storage keeps the failure's message and traceback, which Kolibri's
        # tasks API shows; the full ones are in the server's log above
        raise BackgroundStageError(message) from None

    complete_stage(transfer_session_id, stage)
    context.transfer_session.refresh_from_db()
    _stage_ended(signal, context)
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
    return ran_result(stage, duration, records)


def _stage_ended(signal, context):
    """
    Tell the stage's listeners it has ended: Kolibri's among them, which after a
    push's cleanup work out the coaches' notifications, opening a transaction on
    the main database for each record's and writing to the notifications'
    database. Their transactions begin at their first statement, so the empty
    ones take no turn at SQLite's write lock (see
    :func:`~kolibri_sync_extras_plugin.write_queue.transactions_begun_at_their_first_statement`).
    """
    with transactions_begun_at_their_first_statement():
        signal.completed.fire(context=context)


def _without_session_ids(text, transfer_session):
    """
    ``text`` with the ids of the transfer session and its sync session left out:
    they open morango's session endpoints to whoever reads them.
    """
    for session_id in (transfer_session.id, transfer_session.sync_session_id):
        if session_id:
            text = str(text).replace(str(session_id), "<session>")
    return text


def _count_or_unknown(records):
    return "unknown" if records is None else records
