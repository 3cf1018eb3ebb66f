"""
The morango operations that serialize and deserialize in short transactions
wherever this instance does (see :mod:`.stamping` for why every serialization
must, not only a background job's).
"""

import json

from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.sync.operations import LocalOperation

from ..conflicts import pending_on_isolation_conflict
from ..recovery.leftovers import leftover_sources
from ..recovery.leftovers import post_transfer
from . import support
from .deserialize import deserialize_in_pieces
from .serialize import serialize_in_pieces
from .store_queries import dirty_store_records
from .store_queries import undeserialized_records

__all__ = [
    "PiecewiseDeserializeOperation",
    "PiecewiseSerializeOperation",
    "deserialized_in_pieces",
]


class PiecewiseDeserializeOperation(LocalOperation):
    """
    Serializes and then deserializes a push one short transaction at a time (see
    :mod:`.serialize` and :mod:`.deserialize`), wherever this server receives
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
    SQLite's lock free between pieces; elsewhere someone waits for the stage.
    When another run has applied every record the push brought and nothing else
    waits, it tells morango's operation so, without serializing: applying nothing
    overwrites no local change. It passes at once on a morango version the pieces
    do not mirror (see :mod:`.support`), and on a push that transferred nothing
    when nothing waits to be deserialized (morango's operation does nothing then).
    """

    def handle(self, context):
        """
        :type context: morango.sync.context.LocalSessionContext
        :rtype: str|bool
        """
        self._assert(deserialized_in_pieces(context))
        self._assert(context.sync_session is not None)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        sources = ()
        if not context.transfer_session.records_transferred:
            # nothing new: only an interrupted push's records wait (see below)
            leftovers = undeserialized_records(context.filter)
            self._assert(leftovers.exists())
            sources = leftover_sources(context, leftovers)
            self._assert(sources is not None)
        elif not dirty_store_records(context.filter).exists():
            # another run has applied every record the push brought (every push
            # of a class set but the first): morango's receiver would serialize
            # local changes, with a counter taken before its transaction begins,
            # and then apply nothing. Nothing applied overwrites no local change,
            # and the next stage that sends data serializes them in pieces.
            return _nothing_left(context)
        result = _in_pieces(context)
        if result is False:
            post_transfer(sources)
        return result


class PiecewiseSerializeOperation(LocalOperation):
    """
    Serializes for a pull (on the server) or a push (on the client) one short
    transaction at a time (see :mod:`.serialize`), wherever this instance
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
        from morango.constants.capabilities import FSIC_V2_FORMAT
        from morango.models.core import DatabaseMaxCounter
        from morango.utils import SETTINGS

        self._assert(support.supports_installed_morango())
        self._assert(context.stage == transfer_stages.SERIALIZING)
        self._assert(context.is_producer)
        self._assert(context.sync_session is not None)
        self._assert(context.transfer_session is not None)
        self._assert(context.filter is not None)
        self._assert(SETTINGS.MORANGO_SERIALIZE_BEFORE_QUEUING)
        with pending_on_isolation_conflict() as outcome:
            serialize_in_pieces(
                context.sync_session.profile,
                context.filter,
                pause=_in_background(context),
            )
        if outcome.status:
            return outcome.status
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


def deserialized_in_pieces(context):
    """
    Whether :class:`PiecewiseDeserializeOperation` runs this context's stage: a
    push's deserializing on this server, with a morango the pieces follow. With no
    record dirty under the filter it then touches none at all: it serializes
    nothing first, and morango's receiver applies nothing (told so after a push
    that transferred records, finding nothing to apply after one that did not).
    So the app's changed rows, which the stage would otherwise serialize first,
    are not its work; with a class set pushing at once, every push's
    deserializing but the first is such a stage.

    :type context: morango.sync.context.LocalSessionContext
    :rtype: bool
    """
    from morango.utils import SETTINGS

    return (
        support.supports_installed_morango()
        and SETTINGS.MORANGO_DESERIALIZE_AFTER_DEQUEUING
        and context.is_server
        and context.is_push
        and context.stage == transfer_stages.DESERIALIZING
    )


def _in_background(context):
    """Whether the stage runs in one of the plugin's background jobs."""
    return getattr(context, "in_background", False)


def _nothing_left(context):
    """
    Tell morango's receiver, which deserializes only a push that transferred
    records, and the stage's later operations that nothing is left to
    deserialize (in memory only), and pass.
    """
    context.transfer_session.records_transferred = 0
    return False


def _in_pieces(context):
    profile = context.sync_session.profile
    pause = _in_background(context)
    with pending_on_isolation_conflict() as outcome:
        serialize_in_pieces(profile, context.filter, pause=pause)
        deserialize_in_pieces(profile, context.filter, pause=pause)
    if outcome.status:
        return outcome.status
    return _nothing_left(context)
