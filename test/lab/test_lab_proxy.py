"""
The lab's timing proxy, in front of a small stand-in server on 127.0.0.1 whose
answers each test chooses.
"""

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest

from sync_lab.harness.instances import free_port
from sync_lab.harness.proxy import Exchange
from sync_lab.harness.proxy import TimingProxy


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, sent))
        time.sleep(self.server.delay)
        body = json.dumps(self.server.answer).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    server.requests = []
    server.delay = 0
    server.status = 200
    server.answer = {"ok": True}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server):
    return "http://127.0.0.1:{}".format(server.server_address[1])


def _send(url, method="GET", data=None):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_proxy__forwards_request_and_answer(upstream):
    upstream.answer = {"hello": "client"}
    with TimingProxy(_url(upstream)) as proxy:
        status, body = _send(proxy.url + "/api/thing/?x=1", "POST", {"a": 1})
    assert (status, json.loads(body)) == (200, {"hello": "client"})
    assert upstream.requests == [("POST", "/api/thing/?x=1", b'{"a": 1}')]


def test_proxy__records_method_path_status_and_duration(upstream):
    upstream.delay = 0.3
    upstream.status = 201
    with TimingProxy(_url(upstream)) as proxy:
        _send(proxy.url + "/api/thing/", "PATCH", {})
    (exchange,) = proxy.exchanges
    assert (exchange.method, exchange.path, exchange.status) == (
        "PATCH",
        "/api/thing/",
        201,
    )
    assert exchange.duration >= 0.3
    assert proxy.longest() is exchange


def test_proxy__answers_504_when_upstream_is_silent_too_long(upstream):
    upstream.delay = 1.5
    with TimingProxy(_url(upstream), upstream_timeout=0.3) as proxy:
        status, _ = _send(proxy.url + "/slow/")
    (exchange,) = proxy.exchanges
    assert (status, exchange.status) == (504, 504)
    assert exchange.error and exchange.duration < 1.5


def test_proxy__waits_for_a_slow_upstream_within_its_timeout(upstream):
    upstream.delay = 0.3
    with TimingProxy(_url(upstream), upstream_timeout=5) as proxy:
        status, _ = _send(proxy.url + "/slow/")
    assert status == 200 and proxy.exchanges[0].error is None


def test_proxy__answers_502_when_upstream_is_down():
    with TimingProxy("http://127.0.0.1:{}".format(free_port())) as proxy:
        status, _ = _send(proxy.url + "/")
    assert status == 502 and proxy.exchanges[0].status == 502


def test_proxy__notes_stage_asked_for_and_stage_answered(upstream):
    upstream.answer = {
        "id": "abc",
        "push": False,
        "transfer_stage": "serializing",
        "transfer_stage_status": "started",
        "records_total": None,
        "records_transferred": 0,
    }
    path = "/api/morango/v1/transfersessions/abc/"
    with TimingProxy(_url(upstream)) as proxy:
        _send(proxy.url + path, "PATCH", {"transfer_stage": "serializing"})
    (exchange,) = proxy.exchanges
    assert (
        exchange.transfer_session_id,
        exchange.requested_stage,
        exchange.stage,
        exchange.stage_status,
        exchange.push,
    ) == ("abc", "serializing", "serializing", "started", False)


def test_proxy__notes_pull_buffer_requests_as_transferring(upstream):
    upstream.answer = []
    path = "/api/morango/v1/buffers/?limit=200&offset=0&transfer_session_id=abc"
    with TimingProxy(_url(upstream)) as proxy:
        _send(proxy.url + path)
    (exchange,) = proxy.exchanges
    assert (exchange.transfer_session_id, exchange.requested_stage, exchange.push) == (
        "abc",
        "transferring",
        False,
    )


def test_many_devices_connecting_at_once__every_connection_waits_for_the_accept_loop():
    # a class set starts its syncs at once while the lab's process is busy: the
    # connections wait in the listen queue until the accept loop takes them
    proxy = TimingProxy("http://127.0.0.1:9")  # listening, not yet accepting
    parsed = urllib.parse.urlsplit(proxy.url)
    address = (parsed.hostname, parsed.port)
    connections = []
    try:
        for _ in range(40):
            connections.append(socket.create_connection(address, timeout=3))
    finally:
        for connection in connections:
            connection.close()
        proxy.stop()

    assert len(connections) == 40


@pytest.mark.parametrize(
    "method, path, requested_stage, kind",
    [
        (
            "PATCH",
            "/api/morango/v1/transfersessions/abc/",
            "dequeuing",
            "PATCH transfersessions (dequeuing)",
        ),
        ("DELETE", "/api/morango/v1/syncsessions/abc/", None, "DELETE syncsessions"),
        ("GET", "/api/morango/v1/buffers/?limit=200", None, "GET buffers"),
        ("GET", "/api/public/info/", None, "GET info"),
    ],
)
def test_exchange_kind__endpoint_and_stage__whatever_the_id(
    method, path, requested_stage, kind
):
    exchange = Exchange(method, path, 0.0)
    exchange.requested_stage = requested_stage

    assert exchange.kind == kind
