"""
Larger pages for a pulling client, so a large pull sleeps less.

morango's client fetches a pull in pages of its chunk size (Kolibri's ``sync``
command: 200 records) and sleeps up to a second between pages, since each page
leaves its transferring stage PENDING: at 12,000 records that is about a minute
of sleeping. The server may answer a page with more records than were asked for,
because of how morango 0.8's client (Kolibri 0.19) reads a page:

- ``NetworkOperation.get_buffers`` takes every record of the answer's
  ``results``, whatever the ``limit`` it sent;
- ``validate_and_create_buffer_data`` stores them all and adds the number it
  stored to ``records_transferred``;
- ``SyncSessionClient._pull_record_chunk`` asks for the next page at
  ``offset=records_transferred``, and ``NetworkPullTransferOperation`` stops
  once ``records_transferred`` reaches ``records_total``.

So the client counts exactly what it received and asks next for what follows it.
Older clients are not known to behave so, and get the page size they ask for.
The client's Kolibri version is the ``kolibri`` entry of the instance info the
client sent when it opened the sync session (``SyncSession.client_instance_json``).

Pages share the configured size while several pulls are being answered at once:
with ``n`` pages in flight on the server, a new one gets ``1/n`` of it (never
less than the client asked for). The pages of one process are built under one
interpreter lock, and those of all processes on the server's few cores, so ``n``
full pages at once would each take about ``n`` times as long as one alone;
shared, each takes about as long as one full page alone. The pages in flight are
counted across the server's processes (uwsgi runs several): each holds a place
of :class:`~kolibri_sync_extras_plugin.server_lock.HostWidePlaces` while it is
answered.

A page is also kept short in time: each server process times the pages it sends
and sizes the next so that it takes about :data:`PAGE_SECONDS`, never more
records than the configured size. A 2,000-record page took 0.33 s on one run of
the bench and 0.66 s on a slower machine; on the slower machine pages shrink to
about 900 records. Until a process has timed a page of its own, it sends at most
:data:`UNTIMED_PAGE_SIZE`.

Where: the ``limit`` of the client's ``GET .../buffers/`` is raised in the WSGI
environ when Django signals the request has started, before the request object is
built. morango's view, its pagination and its serializer then run unchanged, just
as if the client had asked for the larger page; nothing of morango's is replaced
for other requests, and the answer's ``next`` link agrees with the page sent.
"""

import logging
import threading
import time
from urllib.parse import parse_qsl
from urllib.parse import urlencode

from django.core.signals import request_finished
from django.core.signals import request_started

from ..config import get_pull_page_size
from ..server_lock import HostWidePlaces
from .morango_urls import morango_endpoint

logger = logging.getLogger(__name__)

__all__ = [
    "KOLIBRI_ACCEPTING_LARGER_PAGES",
    "accepts_larger_pages",
    "pages_in_flight",
    "page_size_for",
    "PageSize",
    "PAGE_SECONDS",
    "UNTIMED_PAGE_SIZE",
    "TIMED_PAGE_MIN_RECORDS",
    "LEAST_TIMED_PAGE_SIZE",
    "forget_page_times",
    "seconds_per_record",
    "connect_pull_pages",
]

#: The Kolibri versions whose morango pull client was read to accept pages larger
#: than its chunk size, and tested doing so (see the module docstring): 0.19 and
#: later, its pre-releases included.
KOLIBRI_ACCEPTING_LARGER_PAGES = ">=0.19.0a0"

#: At most this many pages in flight are counted; more share as this many would.
COUNTED_PAGES = 64

#: How long a page should take the server to answer, from the start of its
#: request to the end of its answer: short of 0.5 s with room for the client's
#: side of it.
PAGE_SECONDS = 0.3
#: The most a process sends per page before it has timed one: half the default
#: page size, so that the first page of a slow server is short too.
UNTIMED_PAGE_SIZE = 1000
#: Pages of fewer records are not timed: their fixed cost (the request, the
#: transfer session's look-up) would pass for a cost per record.
TIMED_PAGE_MIN_RECORDS = 200
#: The time bound never cuts a page below this (twice Kolibri's chunk size), so
#: the pages it cuts are still timed, and one page slowed by something passing is
#: soon outweighed.
LEAST_TIMED_PAGE_SIZE = 2 * TIMED_PAGE_MIN_RECORDS
#: How much a new timing weighs against what the process learnt before it.
_TIMING_WEIGHT = 0.5

_pages = HostWidePlaces("pull_pages", COUNTED_PAGES)
# per thread: the place its page holds and when and how large the page it times
# began, while it is answered
_this_thread = threading.local()
_timing_lock = threading.Lock()
# seconds per record of this process's recent pages; None until it has timed one
_seconds_per_record = None


def seconds_per_record():
    """
    What a record of a pull page has cost this process lately, from the start of
    its request to the end of its answer; ``None`` before the first timed page.

    :rtype: float|None
    """
    return _seconds_per_record


def _learn_page_time(records, seconds):
    global _seconds_per_record
    if records < TIMED_PAGE_MIN_RECORDS or seconds <= 0:
        return
    timed = seconds / records
    with _timing_lock:
        if _seconds_per_record is None:
            _seconds_per_record = timed
        else:
            _seconds_per_record += _TIMING_WEIGHT * (timed - _seconds_per_record)


def forget_page_times():
    """Start again as a process that has timed no page (for tests)."""
    global _seconds_per_record
    with _timing_lock:
        _seconds_per_record = None


def _records_in_time():
    """The records a page may hold to take about :data:`PAGE_SECONDS`."""
    timed = _seconds_per_record
    if timed is None:
        return UNTIMED_PAGE_SIZE
    return max(LEAST_TIMED_PAGE_SIZE, int(PAGE_SECONDS / timed))


def pages_in_flight():
    """:return: How many pull pages the server's processes are answering now. :rtype: int"""
    return _pages.taken()


def _page_started():
    """Count this thread's page as in flight; :return: the pages in flight now."""
    if getattr(_this_thread, "place", None) is None:
        _this_thread.place = _pages.take()
    return max(1, _pages.taken())


def _page_finished(**kwargs):
    place = getattr(_this_thread, "place", None)
    _this_thread.place = None
    timed = getattr(_this_thread, "timed", None)
    _this_thread.timed = None
    _pages.give_back(place)
    if timed is not None:
        started, records = timed
        _learn_page_time(records, time.monotonic() - started)


def accepts_larger_pages(client_instance_data):
    """
    Whether the client whose instance info is ``client_instance_data`` is known to
    accept pull pages larger than it asked for.

    :param client_instance_data: ``SyncSession.client_instance_data``, what the
        client said of itself when the sync session began
    :rtype: bool
    """
    from kolibri.utils.version import version_matches_range

    version = str((client_instance_data or {}).get("kolibri") or "")
    try:
        return version_matches_range(version, KOLIBRI_ACCEPTING_LARGER_PAGES)
    except (AttributeError, TypeError, ValueError):
        # not a version Kolibri can read
        return False


class PageSize:
    """
    What :func:`page_size_for` decided for one page: ``limit``, the records to ask
    morango's view for, and ``records``, how many the page will hold (fewer on a
    pull's last page), or ``None`` when the page is the client's own.
    """

    __slots__ = ("limit", "records")

    def __init__(self, limit, records=None):
        self.limit = limit
        self.records = records


def page_size_for(transfer_session_id, requested, pages_at_once=1, offset=0):
    """
    The records to send for one page of a pull: the configured page size, shared
    among the pages being answered at once and cut to what this process answers in
    about :data:`PAGE_SECONDS`, for a pull of a client known to accept it; else
    what the client asked for. Never fewer.

    :param transfer_session_id: The transfer session the page belongs to
    :param requested: The ``limit`` the client asked for
    :param pages_at_once: Pull pages this process is answering, this one included
    :param offset: The ``offset`` the client asked for
    :rtype: PageSize
    """
    page_size = min(get_pull_page_size() // max(1, pages_at_once), _records_in_time())
    if page_size <= requested:
        return PageSize(requested)
    from morango.models.core import TransferSession

    transfer_session = (
        TransferSession.objects.filter(
            id=transfer_session_id,
            active=True,
            push=False,
            sync_session__is_server=True,
        )
        .select_related("sync_session")
        .only("id", "records_total", "sync_session__client_instance_json")
        .first()
    )
    if transfer_session is None:
        return PageSize(requested)
    try:
        client = transfer_session.sync_session.client_instance_data
    except ValueError:
        return PageSize(requested)
    if not accepts_larger_pages(client):
        return PageSize(requested)
    left = max(0, (transfer_session.records_total or 0) - max(0, offset))
    return PageSize(page_size, min(page_size, left))


def _is_buffer_list(environ):
    return morango_endpoint(environ, "GET", "buffers-list") is not None


def _on_request_started(environ=None, **kwargs):
    if not environ or not _is_buffer_list(environ):
        return
    params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    values = dict(params)
    try:
        requested = int(values["limit"])
        offset = int(values.get("offset") or 0)
        transfer_session_id = values["transfer_session_id"]
    except (KeyError, ValueError):
        return
    started = time.monotonic()
    pages_at_once = _page_started()
    try:
        page = page_size_for(transfer_session_id, requested, pages_at_once, offset)
    except Exception:
        # a failed look-up must not fail the page: the client gets what it asked for
        logger.exception("Could not size a pull page of %s", transfer_session_id)
        return
    if page.records is not None:
        _this_thread.timed = (started, page.records)
    if page.limit == requested:
        return
    environ["QUERY_STRING"] = urlencode(
        [(key, page.limit if key == "limit" else value) for key, value in params]
    )


def connect_pull_pages():
    """Size the pages of pulls as their requests start (see the module docstring)."""
    request_started.connect(
        _on_request_started, dispatch_uid="kolibri_sync_extras_pull_pages"
    )
    request_finished.connect(
        _page_finished, dispatch_uid="kolibri_sync_extras_pull_pages_finished"
    )
