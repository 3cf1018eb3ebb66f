"""
A timing reverse proxy to put between a sync client and a Kolibri server.

It forwards every request to the server and records, for each, the method, path,
status and how long the client waited for the whole answer: what a load balancer
or nginx in front of a real server sees. With ``upstream_timeout`` it answers
``504 Gateway Timeout`` when the server stays silent that long, as nginx's
``proxy_read_timeout`` does, so the lab can show which syncs such a proxy breaks.

For morango's transfer session and buffer requests it also notes which transfer
session and stage each request was about, and the stage and status the server
answered with, so a report can tell how long each stage took as the client saw it.
"""

import gzip
import http.client
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import kolibri  # noqa: F401  # puts Kolibri's vendored morango on sys.path
from morango.constants import transfer_stages

from .instances import LOCALHOST

__all__ = ["Exchange", "TimingProxy"]

TRANSFER_SESSIONS_PATH = "/api/morango/v1/transfersessions/"
BUFFERS_PATH = "/api/morango/v1/buffers/"

# headers that describe one connection, not the message (RFC 9110, section 7.6.1)
_HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
# bigger bodies are record chunks, not transfer sessions: not worth parsing
_MAX_PARSED_BODY = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


class Exchange:
    """One request through the proxy and its answer."""

    __slots__ = (
        "method",
        "path",
        "status",
        "started",
        "duration",
        "request_bytes",
        "response_bytes",
        "transfer_session_id",
        "requested_stage",
        "push",
        "stage",
        "stage_status",
        "records_total",
        "records_transferred",
        "error",
    )

    def __init__(self, method, path, started):
        self.method = method
        self.path = path
        self.started = started
        self.status = None
        self.duration = None
        self.request_bytes = 0
        self.response_bytes = 0
        #: The transfer session the request was about, if it was a morango one
        self.transfer_session_id = None
        #: The stage the request asked the server to run or continue
        self.requested_stage = None
        #: Whether the transfer session is a push, when the request or answer says
        self.push = None
        #: The transfer session's stage and status in the server's answer
        self.stage = None
        self.stage_status = None
        self.records_total = None
        self.records_transferred = None
        #: Why the proxy answered itself (timeout, unreachable server)
        self.error = None

    @property
    def ended(self):
        """Unix time at which the client had the whole answer. :rtype: float"""
        return self.started + (self.duration or 0.0)

    @property
    def kind(self):
        """
        The request named as the lab's reports group it: method, endpoint (the
        part of the path after the API's version, whatever id follows it) and the
        stage it asked for, e.g. ``PATCH transfersessions (dequeuing)``.
        :rtype: str
        """
        parts = [part for part in self.path.split("?")[0].split("/") if part]
        # the endpoint is the part after the API's version, whatever id follows
        after_version = parts.index("v1") + 1 if "v1" in parts else len(parts)
        endpoint = parts[after_version] if after_version < len(parts) else parts[-1]
        stage = " ({})".format(self.requested_stage) if self.requested_stage else ""
        return "{} {}{}".format(self.method, endpoint, stage)

    def __repr__(self):
        return "<Exchange {} {} {} {:.3f}s>".format(
            self.method, self.path, self.status, self.duration or 0.0
        )


def _json_or_none(body):
    if not body or len(body) > _MAX_PARSED_BODY:
        return None
    # morango gzips pushed record chunks, and a server may gzip its answers
    if body[:2] == _GZIP_MAGIC:
        try:
            body = gzip.decompress(body)
        except OSError:
            return None
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        return None


def annotate(exchange, request_body, response_body):
    """
    Note which transfer session and stage a morango request was about.

    :type exchange: Exchange
    """
    path, _, query = exchange.path.partition("?")
    if path.startswith(TRANSFER_SESSIONS_PATH):
        lookup = path[len(TRANSFER_SESSIONS_PATH) :].strip("/")
        sent = _json_or_none(request_body)
        if not isinstance(sent, dict):
            sent = {}
        if exchange.method == "POST":
            exchange.transfer_session_id = sent.get("id")
            exchange.requested_stage = transfer_stages.INITIALIZING
            exchange.push = sent.get("push")
        else:
            exchange.transfer_session_id = lookup or None
            if exchange.method == "DELETE":
                exchange.requested_stage = transfer_stages.CLEANUP
            else:
                exchange.requested_stage = sent.get("transfer_stage")
        answer = _json_or_none(response_body)
        if isinstance(answer, dict):
            exchange.transfer_session_id = answer.get(
                "id", exchange.transfer_session_id
            )
            exchange.stage = answer.get("transfer_stage")
            exchange.stage_status = answer.get("transfer_stage_status")
            exchange.records_total = answer.get("records_total")
            exchange.records_transferred = answer.get("records_transferred")
            if answer.get("push") is not None:
                exchange.push = answer.get("push")
    elif path.startswith(BUFFERS_PATH):
        exchange.requested_stage = transfer_stages.TRANSFERRING
        if exchange.method == "GET":
            params = urllib.parse.parse_qs(query)
            exchange.transfer_session_id = (
                params.get("transfer_session_id") or [None]
            )[0]
            exchange.push = False
        else:
            sent = _json_or_none(request_body)
            if isinstance(sent, list) and sent and isinstance(sent[0], dict):
                exchange.transfer_session_id = sent[0].get("transfer_session")
            exchange.push = True


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sync-lab-proxy"

    def log_message(self, format, *args):
        # the proxy's record is the exchange list, not stderr
        pass

    def do_GET(self):
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _forward(self):
        proxy = self.server.proxy
        exchange = Exchange(self.command, self.path, time.time())
        started = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        exchange.request_bytes = len(body)
        headers = {
            key: value
            for key, value in self.headers.items()
            if key.lower() not in _HOP_BY_HOP
        }
        upstream = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
        )
        try:
            upstream.request(
                self.command, self.path, body=body or None, headers=headers
            )
            response = upstream.getresponse()
            payload = response.read()
            status, reason = response.status, response.reason
            response_headers = [
                (key, value)
                for key, value in response.getheaders()
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length"
            ]
        except socket.timeout:
            status, reason = 504, "Gateway Timeout"
            exchange.error = "no answer from the server within {}s".format(
                proxy.upstream_timeout
            )
            payload, response_headers = exchange.error.encode(), []
        except OSError as e:
            status, reason = 502, "Bad Gateway"
            exchange.error = "server unreachable: {}".format(e)
            payload, response_headers = exchange.error.encode(), []
        finally:
            upstream.close()

        self.send_response(status, reason)
        for key, value in response_headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

        exchange.status = status
        exchange.duration = time.monotonic() - started
        exchange.response_bytes = len(payload)
        annotate(exchange, body, payload)
        proxy._record(exchange)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    #: Connections the kernel keeps waiting for the accept loop (socketserver's
    #: default is 5): a class set of devices starting at once on a busy machine
    #: overflowed 5, and a device whose connection was dropped from the full
    #: queue timed out on its first request and failed its sync before it began.
    request_queue_size = 128


class TimingProxy:
    """
    A threaded HTTP reverse proxy on 127.0.0.1 in front of ``upstream``.

    Use it as a context manager, or :meth:`start` and :meth:`stop` it::

        with TimingProxy(server.base_url, upstream_timeout=60) as proxy:
            client.sync(proxy.url, ...)
        proxy.longest()
    """

    def __init__(
        self, upstream, port=0, upstream_timeout=None, on_exchange=None, host=LOCALHOST
    ):
        """
        :param upstream: The server's base URL, e.g. ``http://127.0.0.1:8080``
        :param port: The port to listen on; any free one by default
        :param upstream_timeout: Seconds of silence from the server after which the
            proxy answers 504; ``None`` waits for ever
        :param on_exchange: Called with each :class:`Exchange` when it is complete,
            from the thread that served it
        """
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = upstream
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.upstream_timeout = upstream_timeout
        self.on_exchange = on_exchange
        self._exchanges = []
        self._lock = threading.Lock()
        self._server = _ProxyServer((host, port), _ProxyHandler)
        self._server.proxy = self
        self._thread = None

    @property
    def url(self):
        """:rtype: str"""
        host, port = self._server.server_address[:2]
        return "http://{}:{}".format(host, port)

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                name="sync-lab-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _record(self, exchange):
        with self._lock:
            self._exchanges.append(exchange)
        if self.on_exchange is not None:
            self.on_exchange(exchange)

    @property
    def exchanges(self):
        """Every exchange so far, in the order they completed. :rtype: list"""
        with self._lock:
            return list(self._exchanges)

    def longest(self):
        """
        The exchange the client waited longest for, or ``None``.

        :rtype: Exchange
        """
        exchanges = self.exchanges
        return max(exchanges, key=lambda e: e.duration) if exchanges else None

    def clear(self):
        """Forget the exchanges so far, e.g. between two syncs."""
        with self._lock:
            del self._exchanges[:]
