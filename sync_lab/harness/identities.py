"""
A client that lies about its instance id: it opens sync sessions over HTTP with
its own certificate, as morango's client does, but claims another instance id in
each (a fresh one, or another device's). morango records the claimed id; no
signature covers it.

The functions run inside a client instance (see
:meth:`~sync_lab.harness.instances.KolibriInstance.call`) that has synced the
facility once, so it holds a certificate of its own.
"""

from types import SimpleNamespace

__all__ = [
    "current_instance_id",
    "open_sync_sessions_claiming",
    "claimed_instance_ids",
]


def current_instance_id():
    """
    Inside an instance: the morango instance id it reports when it syncs.

    :rtype: str
    """
    from morango.models.core import InstanceIDModel

    return InstanceIDModel.get_or_create_current_instance()[0].id


def open_sync_sessions_claiming(
    base_url, facility_id, username, password, instance_ids
):
    """
    Inside a client: open one sync session with the server per claimed instance
    id, signing each with the client's own certificate.

    :param instance_ids: The instance id to claim in each sync session
    :return: The sync session ids, and the filter a full-facility pull asks for
    :rtype: dict
    """
    from unittest import mock

    from kolibri.core.auth.management.utils import get_client_and_server_certs
    from kolibri.core.auth.models import Facility
    from morango.sync import syncsession
    from morango.sync.syncsession import NetworkSyncConnection

    dataset_id = Facility.objects.get(id=facility_id).dataset_id
    connection = NetworkSyncConnection(base_url=base_url)
    client_certificate, server_certificate, _ = get_client_and_server_certs(
        username,
        password,
        dataset_id,
        connection,
        facility_id=facility_id,
        noninteractive=True,
    )
    honest_serializer = syncsession.InstanceIDSerializer
    sync_session_ids = []
    for claimed in instance_ids:

        def claiming(instance, claimed=claimed):
            return SimpleNamespace(
                data=dict(honest_serializer(instance).data, id=claimed)
            )

        with mock.patch.object(syncsession, "InstanceIDSerializer", claiming):
            session = connection.create_sync_session(
                client_certificate, server_certificate
            )
        sync_session_ids.append(session.sync_session.id)
    return {
        "sync_session_ids": sync_session_ids,
        "filter": dataset_id,
        "certificate_id": client_certificate.id,
    }


def claimed_instance_ids(sync_session_ids):
    """
    Inside the server: the instance id morango recorded for each sync session.

    :rtype: list
    """
    from morango.models.core import SyncSession

    recorded = dict(
        SyncSession.objects.filter(id__in=sync_session_ids).values_list(
            "id", "client_instance_id"
        )
    )
    return [getattr(recorded.get(i), "hex", recorded.get(i)) for i in sync_session_ids]
