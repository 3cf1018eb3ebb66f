"""
The morango operations the plugin adds to every sync: one takes a configured stage
out of the HTTP request; two serialize and deserialize in short transactions
wherever this instance does (see :mod:`.stamping`); two finish what an
interrupted sync left undone.
"""

import contextlib
import json
import logging
import threading

from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.constants.capabilities import ASYNC_OPERATIONS
from morango.sync.operations import LocalOperation

from .config import runs_in_background
from .fast_path import runs_inline
from .jobs import job_id_for
from .limits import refuse_stage_over_limits
from .limits import release_reservation
from .pieces import deserialize_in_pieces
from .pieces import partitions_held_if_free
from .pieces import supports_installed_morango
from .request_boundary import schedule_background_stage
from .runner import is_transient_database_error
from .runner import stage_middleware
from .serialize_pieces import serialize_in_pieces
from .sessions import close_superseded_transfer_sessions
from .sessions import own_earlier_pushes
from .store import undeserialized_records

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
    - the context is not already the background job's own,
    - the context is not already the background job's own, nor the stage's run in
      the request (see below).

    A stage small enough to run in the request (see :mod:`.fast_path`) runs there:
    this operation invokes the stage's operations once, as morango's controller
    would, and returns what they return. If another writer got in the way (morango
    answers PENDING after a transaction isolation conflict, or raises one of the
    errors :func:`~.runner.is_transient_database_error` accepts, as two
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
        refuse_stage_over_limits(context)
        try:
            schedule_background_stage(context)
        except Exception:
            release_reservation(job_id_for(context.transfer_session.id, context.stage))
            raise
        return transfer_statuses.STARTED


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
    with _partitions_free_for(context) as free:
        if not free:
            logger.info(
                "Stage %s of transfer session %s would wait in the request for "
                "another stage of the same data; it goes to a background job",
                context.stage,
                context.transfer_session.id,
            )
            return None
        result, reason = _invoke_in_request(context)
    if result != transfer_statuses.PENDING:
        return result
    logger.info(
        "Stage %s of transfer session %s met another writer in the request (%s); "
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


def _partitions_free_for(context):
    """
    For a stage whose work locks the facility's partitions, hold them if they are
    free (see :func:`~.pieces.partitions_held_if_free`); for any other, go on.
    """
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
        return stage_middleware(context.stage)(context), (
            "a transaction isolation conflict"
        )
    except Exception as e:
        if not is_transient_database_error(e):
            raise
        return transfer_statuses.PENDING, e
    finally:
        _stage_in_request.transfer_session_id = None


class PiecewiseDeserializeOperation(LocalOperation):
    """
    Serializes and then deserializes a push one short transaction at a time (see
    :mod:`.serialize_pieces` and :mod:`.pieces`), wherever this server receives
    one: in a background job, so the job never holds the database's write lock for
    long, and in a request, so that every serialization on the server takes its
    counters as the pieces do (see :mod:`.stamping`) and a local change made
    meanwhile is never overwritten. (A client's own pull keeps morango's stage: its
    transfer session lives on through the sync, and the count below would stick.)

    It does what morango's receiver does, serializing first (so deserializing does
    not overwrite local changes) and then deserializing, and passes (returns
    ``False``) so the stage's other operations still run: Kolibri's own (which
    repair what failed, such as clashing picture passwords) and morango's, which
    it tells there is nothing left to deserialize by counting the push's records as
    already applied on the context's transfer session (in memory only; the job
    reads the session again when the stage ends). Only a background job leaves
    SQLite's lock free between pieces; elsewhere someone waits for the stage. It
    passes at once on a morango version :mod:`.pieces` does not mirror, and when
    there is nothing waiting to be deserialized.
    """

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: str|bool
        """
        from morango.utils import SETTINGS

        self._assert(supports_installed_morango())
        self._assert(context.is_server and context.is_push)
        self._assert(context.stage == transfer_stages.DESERIALIZING)
        self._assert(context.sync_session is not None)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        self._assert(SETTINGS.MORANGO_DESERIALIZE_AFTER_DEQUEUING)
        leftovers = undeserialized_records(context.filter)
        self._assert(leftovers.exists())
        sources = ()
        if not context.transfer_session.records_transferred:
            # nothing new: only an interrupted push's records wait (see below)
            sources = _leftover_sources(context, leftovers)
            self._assert(sources is not None)
        result = _in_pieces(context)
        if result is False:
            _post_transfer(sources)
        return result


class PiecewiseSerializeOperation(LocalOperation):
    """
    Serializes for a pull (on the server) or a push (on the client) one short
    transaction at a time (see :mod:`.serialize_pieces`), wherever this instance
    sends data: in a background job, so the job never holds the database's write
    lock for long, and in a request or a client's own sync, so that every
    serialization on this instance takes its counters as the pieces do: each
    inside the transaction that publishes it (see :mod:`.stamping`). morango's
    own takes its counter before its transaction begins, and beside a run in
    pieces could stamp records at or below a counter already published.

    It runs after Kolibri's own serializing operations (see ``priority``), which
    pass, and then does all that morango's ``SerializeOperation`` does, serializing
    and recording the filter's instance counters on the transfer session, and
    completes the stage, so morango's operation does not serialize (and spend a
    counter) a second time. It passes at once on a morango version the pieces do
    not mirror, and where morango would not serialize (this instance does not send
    the data, or serializing before queuing is turned off): morango's operation
    then runs as usual.
    """

    #: Below Kolibri's serializing operations (priority 0), which must still run.
    priority = -100

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: str|bool
        """
        from django.db import OperationalError
        from morango.constants.capabilities import FSIC_V2_FORMAT
        from morango.models.core import DatabaseMaxCounter
        from morango.sync.operations import DBBackend
        from morango.utils import SETTINGS

        self._assert(supports_installed_morango())
        self._assert(context.stage == transfer_stages.SERIALIZING)
        self._assert(context.is_producer)
        self._assert(context.sync_session is not None)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        self._assert(SETTINGS.MORANGO_SERIALIZE_BEFORE_QUEUING)
        try:
            serialize_in_pieces(
                context.sync_session.profile,
                context.filter,
                pause=_in_background(context),
            )
        except OperationalError as e:
            if DBBackend._is_transaction_isolation_error(e):
                return transfer_statuses.PENDING
            raise
        # the rest of morango's operation
        fsic = json.dumps(
            DatabaseMaxCounter.calculate_filter_specific_instance_counters(
                context.filter,
                is_producer=True,
                v2_format=FSIC_V2_FORMAT in context.capabilities,
            )
        )
        if context.is_server:
            context.transfer_session.server_fsic = fsic
            context.transfer_session.client_fsic = context.request.data.get(
                "client_fsic", "{}"
            )
            update_fields = ["server_fsic", "client_fsic"]
        else:
            context.transfer_session.client_fsic = fsic
            update_fields = ["client_fsic"]
        context.transfer_session.save(update_fields=update_fields)
        return transfer_statuses.COMPLETED


def _in_background(context):
    """Whether the stage runs in one of the plugin's background jobs."""
    return getattr(context, "in_background", False)


def _in_pieces(context):
    from django.db import OperationalError
    from morango.sync.operations import DBBackend

    profile = context.sync_session.profile
    pause = _in_background(context)
    try:
        serialize_in_pieces(profile, context.filter, pause=pause)
        deserialize_in_pieces(profile, context.filter, pause=pause)
    except OperationalError as e:
        if DBBackend._is_transaction_isolation_error(e):
            return transfer_statuses.PENDING
        raise
    # morango's receiver deserializes only a push that transferred records
    context.transfer_session.records_transferred = 0
    return False


class DeserializeLeftoversOperation(LocalOperation):
    """
    Deserializes records an interrupted push left behind, when a later push of the
    same data transfers nothing.

    If the server stops during deserializing (crash, restart, a failed job), the
    received records are already merged into morango's store and counted as held,
    so the client's retry sends nothing and morango skips deserializing: the
    records would wait, dirty, for some later push that carries data. On a push
    that transferred no records, this operation deserializes what is waiting
    within the push's filter, then runs Kolibri's post-transfer work for the
    pushes those records came from (their cleanup never ran it).

    It passes to morango's own operation unless every waiting record within the
    filter came from an earlier push of the same client that no stage job is still
    working on (see :func:`~.sessions.own_earlier_pushes`): it never applies
    another client's records, nor records a job is about to deserialize.
    On morango 0.8.15 it leaves them to :class:`PiecewiseDeserializeOperation`,
    which applies the same rule.
    """

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: str|bool
        """
        from morango.utils import SETTINGS

        self._assert(not supports_installed_morango())
        self._assert(context.is_server and context.is_push)
        self._assert(context.stage == transfer_stages.DESERIALIZING)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        self._assert(not context.transfer_session.records_transferred)
        self._assert(SETTINGS.MORANGO_DESERIALIZE_AFTER_DEQUEUING)
        leftovers = undeserialized_records(context.filter)
        self._assert(leftovers.exists())
        sources = _leftover_sources(context, leftovers)
        self._assert(sources is not None)
        result = _deserialize_within(context)
        if result == transfer_statuses.COMPLETED:
            _post_transfer(sources)
        return result


def _leftover_sources(context, leftovers):
    """
    :return: The earlier pushes of the same client that the waiting records came
        from, or ``None`` if any came from another client or a push still in use
    :rtype: list|None
    """
    return own_earlier_pushes(
        context.transfer_session,
        leftovers.values_list("last_transfer_session_id", flat=True).distinct(),
    )


def _post_transfer(transfer_sessions):
    """
    Fire, for each transfer session, the signal morango's server fires after
    cleanup, so Kolibri's post-transfer hooks see the records it received.
    """
    from .context import BackgroundSessionContext
    from .runner import stage_signal

    cleanup = stage_signal(transfer_stages.CLEANUP)
    for transfer_session in transfer_sessions:
        cleanup.completed.fire(context=BackgroundSessionContext(transfer_session))


def _deserialize_within(context):
    """
    Deserialize as morango's receiver does: serialize local changes first to avoid
    merge conflicts, and answer PENDING on a transaction isolation conflict so the
    stage is tried again.
    """
    from django.db import OperationalError
    from morango.sync.operations import DBBackend
    from morango.sync.operations import _deserialize_from_store
    from morango.sync.operations import _serialize_into_store

    profile = context.sync_session.profile
    try:
        _serialize_into_store(profile, filter=context.filter)
        _deserialize_from_store(profile, filter=context.filter)
    except OperationalError as e:
        if DBBackend._is_transaction_isolation_error(e):
            return transfer_statuses.PENDING
        raise
    return transfer_statuses.COMPLETED


class CloseSupersededTransfersOperation(LocalOperation):
    """
    Closes the transfer sessions an interrupted sync of the same client left open,
    when the server cleans up a transfer that completed the same work again (see
    :mod:`.sessions`). It passes, so the stage's own operations then close this
    transfer session as usual.
    """

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: bool
        """
        self._assert(context.is_server)
        self._assert(context.stage == transfer_stages.CLEANUP)
        self._assert(context.transfer_session is not None)
        close_superseded_transfer_sessions(context.transfer_session)
        return False
