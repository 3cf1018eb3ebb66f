"""Sync sessions as morango's server creates them, for the in-process tests."""

import uuid

from morango.models.certificates import Key
from morango.models.core import SyncSession

from sync_lab.harness.flood import issue_certificate
from sync_lab.harness.flood import new_server_sync_session as _lab_sync_session

_client_keys = []


def client_key_pair():
    """
    One key pair for every client certificate of the suite: a certificate's id
    comes from its salt as well as its key, and generating a key takes seconds
    where morango signs in pure Python.
    """
    if not _client_keys:
        _client_keys.append(Key())
    return _client_keys[0]


def issue_test_certificate(parent, user_id=None, keep_private_key=False):
    """:func:`~sync_lab.harness.flood.issue_certificate`, with the suite's key pair."""
    return issue_certificate(
        parent,
        user_id=user_id,
        keep_private_key=keep_private_key,
        key=client_key_pair(),
    )


def device_certificate(facility):
    """A full-facility certificate of a new device, signed by the facility's root."""
    return issue_test_certificate(facility.dataset.get_root_certificate())


def learner_certificate(facility, user):
    """A learner's single-user certificate, signed by the facility's root."""
    return issue_test_certificate(
        facility.dataset.get_root_certificate(), user_id=user.id
    )


def new_server_sync_session(facility, client_instance_id=None, client_certificate=None):
    """
    A server's sync session with a full-facility client, opened as morango's
    server opens it. A client is its certificate: a new device, with a certificate
    of its own, unless ``client_certificate`` is given or ``client_instance_id``
    names a device that opened a session before (a device may open many).
    """
    if client_certificate is None and client_instance_id is not None:
        earlier = (
            SyncSession.objects.filter(
                is_server=True, client_instance_id=client_instance_id
            )
            .select_related("client_certificate")
            .first()
        )
        client_certificate = earlier.client_certificate if earlier else None
    return _lab_sync_session(
        facility,
        client_instance_id or uuid.uuid4(),
        client_certificate=client_certificate or device_certificate(facility),
    )
