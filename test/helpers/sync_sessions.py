"""Sync sessions as morango's server creates them, for the in-process tests."""

import uuid

from sync_lab.harness.flood import new_server_sync_session as _lab_sync_session


def new_server_sync_session(facility, client_instance_id=None):
    """
    A server's sync session with a full-facility client, as the lab's flooding
    client opens them (:func:`sync_lab.harness.flood.new_server_sync_session`): a
    new client instance unless ``client_instance_id`` names one (a client may open
    many sync sessions).
    """
    return _lab_sync_session(facility, client_instance_id or uuid.uuid4())
