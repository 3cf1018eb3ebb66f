"""
The morango operations the plugin adds to every sync: one takes a configured stage
out of the HTTP request; two finish what an interrupted sync left undone.
"""

from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.constants.capabilities import ASYNC_OPERATIONS
from morango.sync.operations import LocalOperation

from .config import runs_in_background
from .fast_path import runs_inline
from .request_boundary import schedule_background_stage
from .sessions import close_superseded_transfer_sessions
from .store import undeserialized_records


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
    - the stage is not small enough to run in the request (see :mod:`.fast_path`).

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
        self._assert(ASYNC_OPERATIONS in context.capabilities)
        self._assert(runs_in_background(context.stage, context.is_push))
        self._assert(not runs_inline(context))
        schedule_background_stage(context)
        return transfer_statuses.STARTED


class DeserializeLeftoversOperation(LocalOperation):
    """
    Deserializes records an interrupted push left behind, when a later push of the
    same data transfers nothing.

    If the server stops during deserializing (crash, restart, a failed job), the
    received records are already merged into morango's store and counted as held,
    so the client's retry sends nothing and morango skips deserializing: the
    records would wait, dirty, for some later push that carries data. On a push
    that transferred no records, this operation deserializes what is waiting
    within the push's filter; otherwise it passes to morango's own operation.
    """

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: str|bool
        """
        from morango.utils import SETTINGS

        self._assert(context.is_server and context.is_push)
        self._assert(context.stage == transfer_stages.DESERIALIZING)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        self._assert(not context.transfer_session.records_transferred)
        self._assert(SETTINGS.MORANGO_DESERIALIZE_AFTER_DEQUEUING)
        self._assert(undeserialized_records(context.filter).exists())
        return _deserialize_within(context)


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
