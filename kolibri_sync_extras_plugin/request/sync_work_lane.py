"""
The requests that do a sync's work, a few at a time in each server process, in
the order they came.

Under ``kolibri start`` every request and every job of the server shares one
Python interpreter, and so one processor's worth of Python. When a class set's
devices sync at once, twenty or thirty of morango's requests (chunk uploads,
stage requests, session set-ups) run side by side and each gets that share of
the interpreter: a chunk upload of 50 ms of work takes a second or more. Worse,
the one among them that holds SQLite's write lock holds it that long, waiting
for its turn at the interpreter between two statements, while every other
writer (the other uploads, the stage jobs) sleeps in SQLite's busy handler: the
lab measured waits of one to two seconds for the lock with no stage job writing.
Served :data:`SYNC_REQUESTS_AT_ONCE` at a time, each request runs at nearly full
speed and lets the lock go within its own few milliseconds; the last request of
a burst ends no later than it would have, and the first ones much sooner.

Only the work waits, never the network: a request's body is read before it
takes its place, so a device on a slow link does not hold one while it uploads.
A client's poll of a stage (a ``GET`` of a transfer session) does not wait: it
costs a few milliseconds, and may itself be held while its stage runs (see
:mod:`~kolibri_sync_extras_plugin.poll_hold`). Nor does any request that is not
morango's. A request waits :data:`MAX_LANE_WAIT_SECONDS` at most, then goes
ahead, so a request that hangs in the view delays the others only that long.
"""

import collections
import logging
import threading

from django.core.exceptions import RequestDataTooBig

from .morango_urls import MORANGO_API_PATH
from .morango_urls import morango_endpoint

logger = logging.getLogger(__name__)

__all__ = [
    "SYNC_REQUESTS_AT_ONCE",
    "MAX_LANE_WAIT_SECONDS",
    "SYNC_WORK_LANE_MIDDLEWARE",
    "FairLane",
    "does_sync_work",
    "SyncWorkLaneMiddleware",
    "add_sync_work_lane_middleware",
]

#: How many of morango's requests a server process serves at once: one runs
#: Python while the other waits on the database.
SYNC_REQUESTS_AT_ONCE = 2
#: The longest a request waits for its place before it goes ahead anyway.
MAX_LANE_WAIT_SECONDS = 10.0
#: The middleware, as Django's settings name it.
SYNC_WORK_LANE_MIDDLEWARE = (
    "kolibri_sync_extras_plugin.request.sync_work_lane.SyncWorkLaneMiddleware"
)


class FairLane:
    """
    ``places`` at a time, handed over in the order they were asked for: a place
    freed goes to the longest waiting request, never to one that has just come.
    """

    def __init__(self, places):
        self.places = places
        self._taken = 0
        self._waiting = collections.deque()
        self._lock = threading.Lock()

    def enter(self, timeout):
        """
        Wait for a place, ``timeout`` seconds at most.

        :return: Whether a place was taken; if so, :meth:`leave` gives it back
        :rtype: bool
        """
        with self._lock:
            if self._taken < self.places and not self._waiting:
                self._taken += 1
                return True
            handed_over = threading.Event()
            self._waiting.append(handed_over)
        if handed_over.wait(timeout):
            return True
        with self._lock:
            try:
                self._waiting.remove(handed_over)
            except ValueError:
                # a place was handed over between the timeout and now
                return True
        return False

    def leave(self):
        """Give a place back: to the longest waiting request, if there is one."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._taken -= 1

    @property
    def waiting(self):
        """How many requests wait for a place. :rtype: int"""
        with self._lock:
            return len(self._waiting)


_lane = FairLane(SYNC_REQUESTS_AT_ONCE)


def does_sync_work(request):
    """
    Whether a request is one of morango's that does a sync's work: any request to
    morango's API but a client's poll of a transfer session.

    :type request: django.http.HttpRequest
    :rtype: bool
    """
    if MORANGO_API_PATH not in request.path_info:
        return False
    return morango_endpoint(request.META, "GET", "transfersessions-detail") is None


def _read_body(request):
    """
    Read the request's body now, off the lane. One larger than Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is left unread (Django refuses it before
    reading a byte) for morango's parser, which reads it as stock Kolibri does.
    """
    try:
        request.body
    except RequestDataTooBig:
        pass


class SyncWorkLaneMiddleware:
    """Serves the requests that do a sync's work through the process's lane."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not does_sync_work(request):
            return self.get_response(request)
        _read_body(request)
        entered = _lane.enter(MAX_LANE_WAIT_SECONDS)
        if not entered:
            logger.warning(
                "%s %s waited %.0fs for one of the %d places of the sync requests' "
                "lane and goes ahead without one: a request of this process has "
                "been running for as long",
                request.method,
                request.path_info,
                MAX_LANE_WAIT_SECONDS,
                _lane.places,
            )
        try:
            return self.get_response(request)
        finally:
            if entered:
                _lane.leave()


def add_sync_work_lane_middleware():
    """
    Add :class:`SyncWorkLaneMiddleware` last to Django's middleware, nearest the
    view, so that Kolibri's own middleware (sessions, authentication) runs before
    a request waits. Runs when the app is ready, before Django's request handler
    loads its middleware (see
    :func:`~kolibri_sync_extras_plugin.request.limits.add_refusal_middleware`).
    """
    from django.conf import settings

    if SYNC_WORK_LANE_MIDDLEWARE not in settings.MIDDLEWARE:
        settings.MIDDLEWARE = list(settings.MIDDLEWARE) + [SYNC_WORK_LANE_MIDDLEWARE]
