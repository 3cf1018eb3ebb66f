"""
The transfer sessions an interrupted sync leaves open on the server.

A client whose sync failed (the server crashed, a stage errored, the network went)
starts a new sync rather than resuming the old one, so the old transfer session
stays active, with any buffered records, until Kolibri's own clean-up closes it an
hour after its last activity at the earliest. Once the same client has completed
the same transfer again, the old one has nothing left to do: the new transfer
carried everything the old one would have, and what the old one had already
received was applied (see :class:`~.operations.DeserializeLeftoversOperation`).
"""

import logging

from django.db import transaction
from morango.models.core import TransferSession

logger = logging.getLogger(__name__)

__all__ = ["superseded_transfer_sessions", "close_superseded_transfer_sessions"]


def superseded_transfer_sessions(transfer_session):
    """
    The server's other active transfer sessions that ``transfer_session`` supersedes:
    same client instance, same direction, same filter, and idle since it began (a
    transfer of that client still being worked on would have been active since).

    :type transfer_session: morango.models.core.TransferSession
    :rtype: django.db.models.QuerySet
    """
    return TransferSession.objects.filter(
        active=True,
        push=transfer_session.push,
        filter=transfer_session.filter,
        sync_session__is_server=True,
        sync_session__client_instance_id=(
            transfer_session.sync_session.client_instance_id
        ),
        last_activity_timestamp__lt=transfer_session.start_timestamp,
    ).exclude(id=transfer_session.id)


def close_superseded_transfer_sessions(transfer_session):
    """
    Close the transfer sessions ``transfer_session`` supersedes, deleting their
    buffered records, as morango's ``cleanupsyncs`` closes stale ones.

    :type transfer_session: morango.models.core.TransferSession
    :return: The ids of the closed transfer sessions
    :rtype: list
    """
    closed = []
    for superseded in superseded_transfer_sessions(transfer_session):
        with transaction.atomic():
            superseded.delete_buffers()
            superseded.active = False
            superseded.save(update_fields=["active"])
        closed.append(superseded.id)
        logger.info(
            "Closed transfer session %s (%s:%s): transfer session %s of the same "
            "client completed the same %s",
            superseded.id,
            superseded.transfer_stage,
            superseded.transfer_stage_status,
            transfer_session.id,
            "push" if transfer_session.push else "pull",
        )
    return closed
