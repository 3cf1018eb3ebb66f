"""Sync sessions as morango's server creates them, for the in-process tests."""

import uuid

from django.utils import timezone
from morango.models.core import SyncSession


def new_server_sync_session(facility, client_instance_id=None):
    """
    A server's sync session with a full-facility client: a new client instance
    unless ``client_instance_id`` names one (a client may open many sync sessions).
    """
    certificate = facility.dataset.get_root_certificate()
    return SyncSession.objects.create(
        id=uuid.uuid4().hex,
        is_server=True,
        active=True,
        profile=certificate.profile,
        client_certificate=certificate,
        server_certificate=certificate,
        connection_kind="network",
        connection_path="http://127.0.0.1",
        client_instance_id=client_instance_id or uuid.uuid4(),
        last_activity_timestamp=timezone.now(),
    )
