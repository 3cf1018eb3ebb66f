"""
morango's requests that do a sync's work are served a few at a time in each
server process, in the order they came; a client's poll and Kolibri's own
requests never wait, a request's body is read before it waits, and no request
waits past the bound.
"""

import json
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.http import HttpResponse
from django.test import RequestFactory
from django.test import override_settings
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.request import sync_work_lane
from kolibri_sync_extras_plugin.request.sync_work_lane import SYNC_WORK_LANE_MIDDLEWARE
from kolibri_sync_extras_plugin.request.sync_work_lane import FairLane
from kolibri_sync_extras_plugin.request.sync_work_lane import SyncWorkLaneMiddleware

from ..helpers.constants import ALL_DATABASES
from ..helpers.morango_client import BUFFERS_PATH
from ..helpers.morango_client import TRANSFER_SESSIONS_PATH
from ..helpers.records import edited_by_a_client
from ..helpers.records import facility_records

SESSION_PATH = TRANSFER_SESSIONS_PATH + uuid.uuid4().hex + "/"


@pytest.fixture
def lane(monkeypatch):
    """A lane of two places for the middleware, fresh for each test."""
    fresh = FairLane(2)
    monkeypatch.setattr(sync_work_lane, "_lane", fresh)
    return fresh


class _Served:
    """A request served by the middleware on a thread of its own, its view held open."""

    def __init__(self, request, served_in):
        self.request = request
        self.in_view = threading.Event()
        self.release = threading.Event()
        self._served_in = served_in
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _view(self, request):
        self._served_in.append(self)
        self.in_view.set()
        self.release.wait(30)
        return HttpResponse(status=201)

    def _serve(self):
        SyncWorkLaneMiddleware(self._view)(self.request)

    def end(self):
        self.release.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


def _upload():
    return RequestFactory().post(
        BUFFERS_PATH, json.dumps([{"model_uuid": "x"}]), content_type="application/json"
    )


def _wait_until(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_lane_is_in_djangos_middleware_nearest_the_view():
    assert settings.MIDDLEWARE[-1] == SYNC_WORK_LANE_MIDDLEWARE


def test_uploads_past_the_places__wait__and_are_served_in_the_order_they_came(lane):
    served_in = []
    first, second = _Served(_upload(), served_in), _Served(_upload(), served_in)
    assert first.in_view.wait(10) and second.in_view.wait(10)
    third = _Served(_upload(), served_in)
    _wait_until(lambda: lane.waiting == 1)
    fourth = _Served(_upload(), served_in)
    _wait_until(lambda: lane.waiting == 2)

    assert not third.in_view.is_set()
    second.end()
    assert third.in_view.wait(10)
    assert not fourth.in_view.is_set()
    first.end()
    assert fourth.in_view.wait(10)

    assert served_in == [first, second, third, fourth]
    third.end()
    fourth.end()


@pytest.mark.parametrize(
    "request_of",
    [
        pytest.param(lambda: RequestFactory().get(SESSION_PATH), id="a client's poll"),
        pytest.param(
            lambda: RequestFactory().post("/api/auth/session/", {}), id="Kolibri's own"
        ),
    ],
)
def test_lane_full__a_poll_or_kolibris_own_request__served_at_once(lane, request_of):
    served_in = []
    uploads = [_Served(_upload(), served_in) for _ in range(2)]
    assert all(upload.in_view.wait(10) for upload in uploads)

    other = _Served(request_of(), served_in)

    assert other.in_view.wait(10)
    for served in uploads + [other]:
        served.end()


@pytest.mark.parametrize(
    "request_of",
    [
        pytest.param(lambda: RequestFactory().patch(SESSION_PATH, "{}"), id="a stage"),
        pytest.param(lambda: RequestFactory().delete(SESSION_PATH), id="a close"),
        pytest.param(
            lambda: RequestFactory().get(BUFFERS_PATH, {"transfer_session_id": "x"}),
            id="a pull's chunk",
        ),
    ],
)
def test_lane_full__other_sync_work__waits_its_turn(lane, request_of):
    served_in = []
    uploads = [_Served(_upload(), served_in) for _ in range(2)]
    assert all(upload.in_view.wait(10) for upload in uploads)

    other = _Served(request_of(), served_in)
    _wait_until(lambda: lane.waiting == 1)
    assert not other.in_view.is_set()

    uploads[0].end()
    assert other.in_view.wait(10)
    uploads[1].end()
    other.end()


def test_an_upload_waiting_for_its_place__its_body_already_read(lane):
    served_in = []
    uploads = [_Served(_upload(), served_in) for _ in range(2)]
    assert all(upload.in_view.wait(10) for upload in uploads)

    waiting = _Served(_upload(), served_in)
    _wait_until(lambda: lane.waiting == 1)

    # read from the network, before the wait: nothing left to read later
    assert waiting.request.META["wsgi.input"].read() == b""
    assert json.loads(waiting.request.body) == [{"model_uuid": "x"}]
    for served in uploads + [waiting]:
        served.end()


def test_places_held_past_the_bound__the_request_goes_ahead_without_one(
    lane, monkeypatch, caplog
):
    monkeypatch.setattr(sync_work_lane, "MAX_LANE_WAIT_SECONDS", 0.2)
    served_in = []
    uploads = [_Served(_upload(), served_in) for _ in range(2)]
    assert all(upload.in_view.wait(10) for upload in uploads)

    late = _Served(_upload(), served_in)

    assert late.in_view.wait(10)
    assert lane.waiting == 0
    assert "goes ahead without one" in caplog.text
    late.end()
    # it took no place, so it gives none back: the two places are the uploads'
    for upload in uploads:
        upload.end()
    again = [_Served(_upload(), served_in) for _ in range(2)]
    assert all(upload.in_view.wait(10) for upload in again)
    assert _Served(_upload(), served_in).in_view.wait(0.1) is False
    for upload in again:
        upload.end()


def test_a_place_handed_over_as_the_wait_times_out__is_kept():
    lane = FairLane(1)
    assert lane.enter(0)
    handed = []

    def leave_once_waiting():
        _wait_until(lambda: lane.waiting == 1)
        lane.leave()
        handed.append(True)

    thread = threading.Thread(target=leave_once_waiting)
    thread.start()
    assert lane.enter(10)
    thread.join(10)

    # the place went to the waiter: one place, taken
    assert not lane.enter(0)
    lane.leave()
    assert lane.enter(0)


@pytest.mark.django_db(databases=ALL_DATABASES)
@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_upload_larger_than_djangos_memory_limit__received_as_stock_receives_it(
    async_client, server_sync_session
):
    records = [
        r
        for r in facility_records(async_client, server_sync_session)
        if r["model_name"] == "facilityuser"
    ]
    push = async_client.create(
        server_sync_session, push=True, records_total=len(records)
    )
    async_client.proceed_to(
        push["id"],
        transfer_stages.SERIALIZING,
        client_fsic=json.dumps({"super": {}, "sub": {}}),
    )
    async_client.proceed_to(push["id"], transfer_stages.QUEUING)

    response = async_client.push_buffers(
        edited_by_a_client(records, push["id"], uuid.uuid4().hex)
    )

    assert response.status_code == 201
    assert async_client.get(push["id"])["records_transferred"] == len(records)
