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

Where: the ``limit`` of the client's ``GET .../buffers/`` is raised in the WSGI
environ when Django signals the request has started, before the request object is
built. morango's view, its pagination and its serializer then run unchanged, just
as if the client had asked for the larger page; nothing of morango's is replaced
for other requests, and the answer's ``next`` link agrees with the page sent.
"""

import logging
import threading
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
    "connect_pull_pages",
]

#: The Kolibri versions whose morango pull client was read to accept pages larger
#: than its chunk size, and tested doing so (see the module docstring): 0.19 and
#: later, its pre-releases included.
KOLIBRI_ACCEPTING_LARGER_PAGES = ">=0.19.0a0"

#: At most this many pages in flight are counted; more share as this many would.
COUNTED_PAGES = 64

_pages = HostWidePlaces("pull_pages", COUNTED_PAGES)
# per thread: the place its page holds, while it is answered
_this_thread = threading.local()


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
    _pages.give_back(place)


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


def page_size_for(transfer_session_id, requested, pages_at_once=1):
    """
    The records to send for one page of a pull: the configured page size, shared
    among the pages being answered at once, for a pull of a client known to accept
    it; else what the client asked for. Never fewer.

    :param transfer_session_id: The transfer session the page belongs to
    :param requested: The ``limit`` the client asked for
    :param pages_at_once: Pull pages this process is answering, this one included
    :rtype: int
    """
    page_size = get_pull_page_size() // max(1, pages_at_once)
    if page_size <= requested:
        return requested
    from morango.models.core import TransferSession

    transfer_session = (
        TransferSession.objects.filter(
            id=transfer_session_id,
            active=True,
            push=False,
            sync_session__is_server=True,
        )
        .select_related("sync_session")
        .only("id", "sync_session__client_instance_json")
        .first()
    )
    if transfer_session is None:
        return requested
    try:
        client = transfer_session.sync_session.client_instance_data
    except ValueError:
        return requested
    if not accepts_larger_pages(client):
        return requested
    return page_size


def _is_buffer_list(environ):
    return morango_endpoint(environ, "GET", "buffers-list") is not None


def _on_request_started(environ=None, **kwargs):
    if not environ or not _is_buffer_list(environ):
        return
    params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    values = dict(params)
    try:
        requested = int(values["limit"])
        transfer_session_id = values["transfer_session_id"]
    except (KeyError, ValueError):
        return
    pages_at_once = _page_started()
    try:
        page_size = page_size_for(transfer_session_id, requested, pages_at_once)
    except Exception:
        # a failed look-up must not fail the page: the client gets what it asked for
        logger.exception("Could not size a pull page of %s", transfer_session_id)
        return
    if page_size == requested:
        return
    environ["QUERY_STRING"] = urlencode(
        [(key, page_size if key == "limit" else value) for key, value in params]
    )


def connect_pull_pages():
    """Size the pages of pulls as their requests start (see the module docstring)."""
    request_started.connect(
        _on_request_started, dispatch_uid="kolibri_sync_extras_pull_pages"
    )
    request_finished.connect(
        _page_finished, dispatch_uid="kolibri_sync_extras_pull_pages_finished"
    )
