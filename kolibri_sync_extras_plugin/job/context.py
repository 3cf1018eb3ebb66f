"""
The session context a background stage runs with.

A morango server context normally wraps the HTTP request that asked for the stage.
A background job has no request, so the job rebuilds the context from the
transfer session and the parts of the client's request the stage reads.
"""

from morango.sync.context import LocalSessionContext


class RecordedRequest:
    """
    The parts of the client's request that a deferred stage still needs.

    morango's server-side serializing stage reads ``request.data["client_fsic"]``; the
    job carries that value here so it serializes exactly what the client asked for.
    """

    __slots__ = ("data",)

    def __init__(self, data=None):
        """
        :param data: The request data the stage reads, e.g. ``{"client_fsic": "..."}``
        :type data: dict|None
        """
        self.data = dict(data or {})


class BackgroundSessionContext(LocalSessionContext):
    """
    A server-side local context for a stage running in a background job.

    It keeps morango's server role (``is_server``) and so the producer/receiver sides
    of the transfer; ``in_background`` tells the plugin's own operation not to defer
    the stage a second time.
    """

    __slots__ = ()
    in_background = True

    def __init__(self, transfer_session, request_data=None, capabilities=None):
        """
        :type transfer_session: morango.models.core.TransferSession
        :param request_data: See :class:`RecordedRequest`
        :type request_data: dict|None
        :param capabilities: The capabilities the client advertised
        :type capabilities: list|set|None
        """
        super().__init__(
            request=RecordedRequest(request_data),
            transfer_session=transfer_session,
            capabilities=capabilities,
        )
