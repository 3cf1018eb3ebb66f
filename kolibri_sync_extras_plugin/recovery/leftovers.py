"""
Records an interrupted push left merged in the store but not applied, and the
operations that finish them: applied only when they came from the same client's
own earlier pushes, none still in use (see :mod:`.superseded`).
"""

from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.sync.operations import LocalOperation

from ..conflicts import pending_on_isolation_conflict
from ..piecewise import support
from ..piecewise.store_queries import undeserialized_records
from ..stages import stage_signal
from .superseded import close_superseded_transfer_sessions
from .superseded import own_earlier_pushes

__all__ = [
    "CloseSupersededTransfersOperation",
    "DeserializeLeftoversOperation",
    "leftover_sources",
    "post_transfer",
]


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
    working on (see :func:`~.superseded.own_earlier_pushes`): it never applies
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

        self._assert(not support.supports_installed_morango())
        self._assert(context.is_server and context.is_push)
        self._assert(context.stage == transfer_stages.DESERIALIZING)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        self._assert(not context.transfer_session.records_transferred)
        self._assert(SETTINGS.MORANGO_DESERIALIZE_AFTER_DEQUEUING)
        leftovers = undeserialized_records(context.filter)
        self._assert(leftovers.exists())
        sources = leftover_sources(context, leftovers)
        self._assert(sources is not None)
        result = _deserialize_within(context)
        if result == transfer_statuses.COMPLETED:
            post_transfer(sources)
        return result


def leftover_sources(context, leftovers):
    """
    :return: The earlier pushes of the same client that the waiting records came
        from, or ``None`` if any came from another client or a push still in use
    :rtype: list|None
    """
    return own_earlier_pushes(
        context.transfer_session,
        leftovers.values_list("last_transfer_session_id", flat=True).distinct(),
    )


def post_transfer(transfer_sessions):
    """
    Fire, for each transfer session, the signal morango's server fires after
    cleanup, so Kolibri's post-transfer hooks see the records it received.
    """
    from ..job.context import BackgroundSessionContext

    cleanup = stage_signal(transfer_stages.CLEANUP)
    for transfer_session in transfer_sessions:
        cleanup.completed.fire(context=BackgroundSessionContext(transfer_session))


def _deserialize_within(context):
    """
    Deserialize as morango's receiver does: serialize local changes first to avoid
    merge conflicts, and answer PENDING on a transaction isolation conflict so the
    stage is tried again.
    """
    from morango.sync.operations import _deserialize_from_store
    from morango.sync.operations import _serialize_into_store

    profile = context.sync_session.profile
    with pending_on_isolation_conflict() as outcome:
        _serialize_into_store(profile, filter=context.filter)
        _deserialize_from_store(profile, filter=context.filter)
    return outcome.status or transfer_statuses.COMPLETED


class CloseSupersededTransfersOperation(LocalOperation):
    """
    Closes the transfer sessions an interrupted sync of the same client left open,
    when the server cleans up a transfer that completed the same work again (see
    :mod:`.superseded`). It passes, so the stage's own operations then close this
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
