"""
The transfer sessions an interrupted sync leaves open on the server.

A client whose sync failed (the server crashed, a stage errored, the network went)
starts a new sync rather than resuming the old one, so the old transfer session
stays active, with any buffered records, until Kolibri's own clean-up closes it an
hour after its last activity at the earliest. Once the same client has completed
the same transfer again, the old one has nothing left to do: the new transfer
carried everything the old one would have, and what the old one had already
received was applied (see :class:`~.leftovers.DeserializeLeftoversOperation`).
"""

import datetime
import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from ..request.limits import unfinished_stage_jobs
from ..stage_status import job_id_for

logger = logging.getLogger(__name__)

__all__ = [
    "SUPERSEDED_IDLE_SECONDS",
    "sessions_in_use",
    "superseded_transfer_sessions",
    "close_superseded_transfer_sessions",
    "own_earlier_pushes",
]

#: How long a transfer session must have been left alone before a later transfer
#: of the same client may close it. Polling a stage does not touch the transfer
#: session, and morango's client polls at most 5 s apart: this leaves a wide margin
#: for that, and for a pulling client's own work before it asks for cleanup.
SUPERSEDED_IDLE_SECONDS = 300


def sessions_in_use(transfer_session_ids):
    """
    Those of the transfer sessions whose current stage has a stage job that has not
    finished: a job is still going to work on them.

    :param transfer_session_ids: Transfer session ids (hex)
    :rtype: set
    """
    stages = dict(
        TransferSession.objects.filter(id__in=list(transfer_session_ids)).values_list(
            "id", "transfer_stage"
        )
    )
    job_ids = {job_id_for(ts_id, stage): ts_id for ts_id, stage in stages.items()}
    unfinished = {job.job_id for job in unfinished_stage_jobs()}
    return {job_ids[job_id] for job_id in unfinished & set(job_ids)}


def superseded_transfer_sessions(transfer_session):
    """
    The server's other active transfer sessions that ``transfer_session`` supersedes:
    same client instance, same direction, same filter, idle since it began, either
    for at least :data:`SUPERSEDED_IDLE_SECONDS` or at an errored stage, and with no
    stage job still to finish.
    A client that sends no instance id cannot be told from another such client, so
    none of its transfer sessions is superseded.

    :type transfer_session: morango.models.core.TransferSession
    :rtype: list
    """
    client_instance_id = transfer_session.sync_session.client_instance_id
    if client_instance_id is None:
        return []
    left_alone = Q(
        last_activity_timestamp__lt=timezone.now()
        - datetime.timedelta(seconds=SUPERSEDED_IDLE_SECONDS)
    )
    # morango's client stops at an errored stage, and morango never moves on from one
    gave_up = Q(transfer_stage_status=transfer_statuses.ERRORED)
    candidates = list(
        TransferSession.objects.filter(
            left_alone | gave_up,
            active=True,
            push=transfer_session.push,
            filter=transfer_session.filter,
            sync_session__is_server=True,
            sync_session__client_instance_id=client_instance_id,
            last_activity_timestamp__lt=transfer_session.start_timestamp,
        ).exclude(id=transfer_session.id)
    )
    in_use = sessions_in_use(c.id for c in candidates)
    return [c for c in candidates if c.id not in in_use]


def close_superseded_transfer_sessions(transfer_session):
    """
    Close the transfer sessions ``transfer_session`` supersedes, deleting their
    buffered records, as morango's ``cleanupsyncs`` closes stale ones. Each is
    closed only if it is still as idle as when it was picked.

    :type transfer_session: morango.models.core.TransferSession
    :return: The ids of the closed transfer sessions
    :rtype: list
    """
    closed = []
    for superseded in superseded_transfer_sessions(transfer_session):
        with transaction.atomic():
            still_idle = TransferSession.objects.filter(
                id=superseded.id,
                active=True,
                last_activity_timestamp=superseded.last_activity_timestamp,
            ).update(active=False)
            if not still_idle:
                continue
            superseded.delete_buffers()
        closed.append(superseded.id)
        logger.info(
            "Closed transfer session %s (%s:%s): a later transfer of the same "
            "client completed the same %s",
            superseded.id,
            superseded.transfer_stage,
            superseded.transfer_stage_status,
            "push" if transfer_session.push else "pull",
        )
    return closed


def own_earlier_pushes(transfer_session, source_ids):
    """
    The transfer sessions that left records behind, if each is an earlier push to
    this server by the same client as ``transfer_session`` and none has a stage job
    still to finish (that job will deserialize them itself).

    :type transfer_session: morango.models.core.TransferSession
    :param source_ids: The ``last_transfer_session_id`` of each leftover record
    :return: The transfer sessions, or ``None`` if any record came from elsewhere,
        from a client without an instance id, or from a push still in progress
    :rtype: list|None
    """
    source_ids = set(source_ids)
    client_instance_id = transfer_session.sync_session.client_instance_id
    if client_instance_id is None or None in source_ids:
        return None
    sources = list(
        TransferSession.objects.filter(
            id__in=list(source_ids),
            push=True,
            sync_session__is_server=True,
            sync_session__client_instance_id=client_instance_id,
        ).exclude(id=transfer_session.id)
    )
    if len(sources) != len(source_ids) or sessions_in_use(s.id for s in sources):
        return None
    return sources
