"""The morango operation that takes a configured stage out of the HTTP request."""

from morango.constants import transfer_statuses
from morango.constants.capabilities import ASYNC_OPERATIONS
from morango.sync.operations import LocalOperation

from .config import runs_in_background
from .jobs import schedule_background_stage


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
    - the context is not already the background job's own.

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
        schedule_background_stage(context)
        return transfer_statuses.STARTED
