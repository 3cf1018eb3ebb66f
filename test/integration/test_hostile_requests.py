"""
Requests anyone on the network can send to morango's transfer session API: a
malformed id, an unknown stage, a closed transfer session, one this instance runs
as a client. Each gets the answer stock Kolibri gives, the plugin logs no error
for it and enqueues nothing; the plugin logs no line naming the transfer session
id (a bearer token) when a client polls.
"""

import contextlib
import datetime
import logging
import uuid

import pytest
from django.core.signals import request_finished
from django.core.signals import request_started
from django.test import Client
from django.utils import timezone
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import SyncSession
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.kolibri_plugin import BackgroundStageSyncHook
from kolibri_sync_extras_plugin.request.hooks import connect_request_signals
from kolibri_sync_extras_plugin.request.poll import MISSING_JOB_GRACE_SECONDS

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import no_stage_jobs_after
from ..helpers.morango_client import TRANSFER_SESSIONS_PATH

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

PLUGIN_LOGGER = "kolibri_sync_extras_plugin"


@contextlib.contextmanager
def plugin_off(monkeypatch):
    """The server as stock Kolibri: no request hooks, no plugin operations."""
    request_started.disconnect(dispatch_uid="kolibri_sync_extras_request_started")
    request_finished.disconnect(dispatch_uid="kolibri_sync_extras_request_finished")
    with monkeypatch.context() as patch:
        patch.setattr(BackgroundStageSyncHook, "get_sync_operations", lambda *a: [])
        try:
            yield
        finally:
            connect_request_signals()


def _answer(method, path, body=None):
    client = Client(raise_request_exception=False)
    if body is None:
        response = getattr(client, method)(path)
    else:
        response = getattr(client, method)(path, body, content_type="application/json")
    return response.status_code, response.content


def _stock_and_plugin_answers(monkeypatch, method, path, body=None):
    with plugin_off(monkeypatch):
        stock = _answer(method, path, body)
    return stock, _answer(method, path, body)


def _plugin_errors(caplog):
    return [
        r
        for r in caplog.records
        if r.name.startswith(PLUGIN_LOGGER) and r.levelno >= logging.WARNING
    ]


@pytest.fixture
def client_side_stage(server_sync_session):
    """
    A transfer session this instance runs as the client of another server, waiting
    on that server's stage since long ago: no job of this instance serves it.
    """
    sync_session = SyncSession.objects.get(id=server_sync_session.id)
    sync_session.id = uuid.uuid4().hex
    sync_session.is_server = False
    sync_session.save(force_insert=True)
    long_ago = timezone.now() - datetime.timedelta(
        seconds=MISSING_JOB_GRACE_SECONDS + 60
    )
    return TransferSession.objects.create(
        id=uuid.uuid4().hex,
        sync_session=sync_session,
        push=False,
        active=True,
        filter=sync_session.server_certificate.get_root().id,
        transfer_stage=transfer_stages.SERIALIZING,
        transfer_stage_status=transfer_statuses.STARTED,
        last_activity_timestamp=long_ago,
        start_timestamp=long_ago,
    )


@pytest.mark.parametrize(
    "pk", ["not-a-uuid", "..", "%00", "x" * 300, "0" * 31, uuid.uuid4().hex]
)
def test_get__malformed_or_unknown_id__stock_answer_and_no_plugin_error(
    monkeypatch, caplog, pk
):
    caplog.set_level(logging.DEBUG)
    stock, plugin = _stock_and_plugin_answers(
        monkeypatch, "get", TRANSFER_SESSIONS_PATH + pk + "/"
    )

    assert plugin == stock
    assert _plugin_errors(caplog) == []


def test_patch__unknown_stage__stock_answer_no_plugin_error_nothing_enqueued(
    background_everything, async_client, server_sync_session, monkeypatch, caplog
):
    transfer = async_client.create(server_sync_session, push=False)
    caplog.set_level(logging.DEBUG)
    path = "{}{}/".format(TRANSFER_SESSIONS_PATH, transfer["id"])

    stock, plugin = _stock_and_plugin_answers(
        monkeypatch, "patch", path, {"transfer_stage": "bogus"}
    )

    assert plugin[0] == stock[0]
    assert _plugin_errors(caplog) == []
    assert no_stage_jobs_after()


def test_get__closed_transfer_session__stock_answer_nothing_settled(
    pull_at_serializing, monkeypatch, caplog
):
    TransferSession.objects.filter(id=pull_at_serializing["id"]).update(active=False)
    caplog.set_level(logging.DEBUG)
    path = "{}{}/".format(TRANSFER_SESSIONS_PATH, pull_at_serializing["id"])

    stock, plugin = _stock_and_plugin_answers(monkeypatch, "get", path)

    assert plugin == stock
    assert _plugin_errors(caplog) == []
    status = TransferSession.objects.get(id=pull_at_serializing["id"])
    assert status.transfer_stage_status == transfer_statuses.STARTED


def test_get__transfer_session_this_instance_runs_as_client__left_started(
    client_side_stage, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)
    path = "{}{}/".format(TRANSFER_SESSIONS_PATH, client_side_stage.id)

    stock, plugin = _stock_and_plugin_answers(monkeypatch, "get", path)

    assert plugin == stock
    assert _plugin_errors(caplog) == []
    client_side_stage.refresh_from_db()
    assert client_side_stage.transfer_stage_status == transfer_statuses.STARTED


def test_poll__stage_in_the_background__id_not_logged_at_info(
    pull_at_serializing, async_client, caplog
):
    caplog.set_level(logging.INFO)

    for _ in range(3):
        async_client.get(pull_at_serializing["id"])

    # Kolibri's own request log names every path; the plugin adds no line of its own
    assert [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(PLUGIN_LOGGER)
        and pull_at_serializing["id"] in r.getMessage()
    ] == []
