"""
A client of morango's transfer session API, as a morango client speaks it, run
through Django's test client: the same request cycle as over HTTP (request
signals included) without a socket.
"""

import json
import uuid

from django.test import Client
from morango.constants.capabilities import ASYNC_OPERATIONS
from morango.constants.capabilities import FSIC_V2_FORMAT
from morango.utils import CAPABILITIES_CLIENT_HEADER

from sync_lab.harness.proxy import BUFFERS_PATH
from sync_lab.harness.proxy import TRANSFER_SESSIONS_PATH

__all__ = ["BUFFERS_PATH", "TRANSFER_SESSIONS_PATH", "MorangoHttpClient"]


class MorangoHttpClient:
    """
    Speaks morango's transfer session API with or without the
    ``ASYNC_OPERATIONS`` capability.
    """

    def __init__(self, capabilities=(ASYNC_OPERATIONS, FSIC_V2_FORMAT)):
        self.client = Client()
        header = "HTTP_" + CAPABILITIES_CLIENT_HEADER.upper().replace("-", "_")
        self.extra = {header: " ".join(capabilities)}

    def _url(self, transfer_session_id=None):
        url = TRANSFER_SESSIONS_PATH
        if transfer_session_id is not None:
            url += "{}/".format(transfer_session_id)
        return url

    def create(
        self, sync_session, push, records_total=None, client_fsic="{}", sync_filter=None
    ):
        """Open a transfer session; a full-facility one unless ``sync_filter`` says."""
        data = {
            "id": uuid.uuid4().hex,
            "filter": sync_filter or sync_session.server_certificate.get_root().id,
            "push": push,
            "sync_session_id": sync_session.id,
            "client_fsic": client_fsic,
        }
        if records_total is not None:
            data["records_total"] = records_total
        return _json(
            self.client.post(self._url(), json.dumps(data), **self._json_extra())
        )

    def get(self, transfer_session_id):
        return _json(self.client.get(self._url(transfer_session_id), **self.extra))

    def proceed_to(self, transfer_session_id, stage, **data):
        return _json(self.ask_for_stage(transfer_session_id, stage, **data))

    def ask_for_stage(self, transfer_session_id, stage, **data):
        """:return: The server's answer to a PATCH asking for ``stage``, as it is"""
        data["transfer_stage"] = stage
        return self.client.patch(
            self._url(transfer_session_id), json.dumps(data), **self._json_extra()
        )

    def close(self, transfer_session_id):
        response = self.client.delete(self._url(transfer_session_id), **self.extra)
        assert response.status_code == 204, response.content
        return response

    def pull_buffers(self, transfer_session_id):
        """:return: The records a pull's server has queued for the client"""
        response = self.client.get(
            BUFFERS_PATH,
            {"transfer_session_id": transfer_session_id},
            **self.extra,
        )
        assert response.status_code == 200, response.content
        return response.json()

    def push_buffers(self, records):
        """Send a push's records, as the client's transferring stage does."""
        response = self.client.post(
            BUFFERS_PATH, json.dumps(records), **self._json_extra()
        )
        assert response.status_code == 201, response.content
        return response

    def _json_extra(self):
        # bodies are encoded by the callers: Django before 2.1 (Kolibri 0.16)
        # does not encode a dict as JSON itself
        return dict(self.extra, content_type="application/json")


def _json(response):
    assert response.status_code < 300, (response.status_code, response.content)
    return response.json()
