"""
A pulling client known to accept larger pages gets them, as large as the server
answers in about ``PAGE_SECONDS``, and ends with exactly the server's records; any
other client gets the page size it asked for. A stock
client's whole pull, against a real server, is in
``test/e2e/test_pull_pages_stock_client.py``.
"""

import json
import threading
from contextlib import contextmanager
from urllib.parse import parse_qs
from urllib.parse import urlparse

import pytest
from django.core.signals import request_finished
from django.core.signals import request_started
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.request import pull_pages
from kolibri_sync_extras_plugin.request.pull_pages import accepts_larger_pages
from kolibri_sync_extras_plugin.request.pull_pages import pages_in_flight

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.locks import other_process_holding_lock
from ..helpers.morango_client import BUFFERS_PATH
from ..helpers.options import sync_options

#: What the client asks for per page in these tests, and what the server sends.
ASKED = 5
PAGE = 20


@pytest.fixture(autouse=True)
def no_page_timed_yet():
    """Each test starts as a server process that has timed no pull page."""
    pull_pages.forget_page_times()
    yield
    pull_pages.forget_page_times()


@pytest.fixture
def small_timed_pages(monkeypatch):
    """Pages of these tests' few records are timed, and the time bound may cut them
    to any size; ``PAGE_SECONDS`` is what the tests teach the process against."""
    monkeypatch.setattr(pull_pages, "TIMED_PAGE_MIN_RECORDS", 1)
    monkeypatch.setattr(pull_pages, "LEAST_TIMED_PAGE_SIZE", 1)
    monkeypatch.setattr(pull_pages, "PAGE_SECONDS", 0.3)


def _teach_seconds_per_record(seconds):
    """As if this process had just sent a page whose records took ``seconds`` each."""
    pull_pages.forget_page_times()
    pull_pages._learn_page_time(1000, 1000 * seconds)


@pytest.mark.parametrize(
    "kolibri_version, accepted",
    [
        ("0.19.5", True),
        ("0.19.0b3", True),
        ("0.20.1", True),
        ("1.0.0", True),
        ("0.18.3", False),
        ("0.15.12", False),
        (None, False),
        ("unknown", False),
    ],
)
def test_accepts_larger_pages__by_the_clients_kolibri_version(
    kolibri_version, accepted
):
    instance = {"id": "c0ffee"}
    if kolibri_version is not None:
        instance["kolibri"] = kolibri_version
    assert accepts_larger_pages(instance) is accepted


def test_accepts_larger_pages__no_instance_info__refused():
    assert accepts_larger_pages(None) is False


@pytest.fixture
def queued_pull(async_client, server_sync_session):
    """
    A pull of the facility, queued on the server (stages in the requests), whose
    client said at the start of its sync session that it runs ``kolibri_version``.
    """

    def queue(kolibri_version):
        server_sync_session.client_instance_json = json.dumps(
            {
                "id": server_sync_session.client_instance_id.hex,
                "kolibri": kolibri_version,
            }
        )
        server_sync_session.save(update_fields=["client_instance_json"])
        pull = async_client.create(server_sync_session, push=False)
        async_client.proceed_to(
            pull["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
        )
        queued = async_client.proceed_to(pull["id"], transfer_stages.QUEUING)
        assert queued["records_total"] > PAGE
        return pull["id"]

    return queue


def _page(client, transfer_session_id, limit, offset=0):
    response = client.client.get(
        BUFFERS_PATH,
        {"limit": limit, "offset": offset, "transfer_session_id": transfer_session_id},
        **client.extra,
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__client_known_to_accept__gets_the_configured_page(
    queued_pull, async_client
):
    transfer_session_id = queued_pull("0.19.5")

    with sync_options(PULL_PAGE_SIZE=PAGE):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == PAGE
    # the link to the next page agrees with the page sent
    assert parse_qs(urlparse(page["next"]).query)["offset"] == [str(PAGE)]


@contextmanager
def other_pages_in_flight(count):
    """
    ``count`` other request threads answering pull pages meanwhile: each has
    started its page (as Django's handler signals it) and not finished it. They
    ask for pages as large as the configured size, so they never look anything up.
    """
    started = threading.Semaphore(0)
    release = threading.Event()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": BUFFERS_PATH,
        "QUERY_STRING": "limit=5000&offset=0&transfer_session_id=" + "a" * 32,
    }

    def answer_a_page():
        request_started.send(sender=None, environ=dict(environ))
        started.release()
        release.wait(30)
        request_finished.send(sender=None)

    threads = [threading.Thread(target=answer_a_page) for _ in range(count)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=30)
    try:
        yield
    finally:
        release.set()
        for thread in threads:
            thread.join(30)


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__other_pages_in_flight__shares_the_configured_page(
    queued_pull, async_client
):
    transfer_session_id = queued_pull("0.19.5")

    with sync_options(PULL_PAGE_SIZE=PAGE), other_pages_in_flight(1):
        assert pages_in_flight() == 1
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == PAGE // 2
    assert pages_in_flight() == 0


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__a_page_in_flight_in_another_process__shares_the_configured_page(
    queued_pull, async_client
):
    # another uwsgi process of the server is answering a page meanwhile
    transfer_session_id = queued_pull("0.19.5")
    place_of_other_page = pull_pages._pages._path(0)

    with sync_options(PULL_PAGE_SIZE=PAGE), other_process_holding_lock(
        place_of_other_page, 60
    ):
        assert pages_in_flight() == 1
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == PAGE // 2
    assert pages_in_flight() == 0


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__many_pages_in_flight__never_fewer_than_asked(
    queued_pull, async_client
):
    transfer_session_id = queued_pull("0.19.5")

    with sync_options(PULL_PAGE_SIZE=PAGE), other_pages_in_flight(7):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == ASKED


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__after_the_other_pages_finish__gets_the_whole_page_again(
    queued_pull, async_client
):
    transfer_session_id = queued_pull("0.19.5")
    with sync_options(PULL_PAGE_SIZE=PAGE), other_pages_in_flight(3):
        pass

    with sync_options(PULL_PAGE_SIZE=PAGE):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == PAGE


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__client_not_known_to_accept__gets_what_it_asked_for(
    queued_pull, async_client
):
    transfer_session_id = queued_pull("0.18.3")

    with sync_options(PULL_PAGE_SIZE=PAGE):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == ASKED


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__page_size_zero__client_gets_what_it_asked_for(
    queued_pull, async_client
):
    transfer_session_id = queued_pull("0.19.5")

    with sync_options(PULL_PAGE_SIZE=0):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == ASKED


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__client_asks_for_more__never_gets_fewer(queued_pull, async_client):
    transfer_session_id = queued_pull("0.19.5")

    with sync_options(PULL_PAGE_SIZE=ASKED):
        page = _page(async_client, transfer_session_id, PAGE)

    assert len(page["results"]) == PAGE


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_pages__offsets_of_the_records_received__cover_every_record_once(
    queued_pull, async_client
):
    # the client's way: ask at the offset of what it has received so far
    transfer_session_id = queued_pull("0.19.5")
    received = []
    with sync_options(PULL_PAGE_SIZE=PAGE):
        while True:
            page = _page(async_client, transfer_session_id, ASKED, len(received))
            if not page["results"]:
                break
            received.extend(record["model_uuid"] for record in page["results"])

    assert len(received) == page["count"]
    assert len(set(received)) == len(received)


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__no_page_timed_yet__at_most_the_untimed_size(
    queued_pull, async_client, monkeypatch
):
    monkeypatch.setattr(pull_pages, "UNTIMED_PAGE_SIZE", PAGE // 2)
    transfer_session_id = queued_pull("0.19.5")

    with sync_options(PULL_PAGE_SIZE=PAGE):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == PAGE // 2


@pytest.mark.parametrize(
    "seconds_per_record, records",
    [
        # 8 records take the page's 0.3 s
        (0.3 / 8, 8),
        # the configured size, however fast
        (0.3 / 10_000, PAGE),
        # what the client asked for, however slow
        (1.0, ASKED),
    ],
    ids=[
        "slow__what_fits_in_the_time",
        "fast__the_configured_size",
        "very_slow__asked",
    ],
)
@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__after_timed_pages__holds_what_fits_in_the_time_within_bounds(
    queued_pull, async_client, small_timed_pages, seconds_per_record, records
):
    transfer_session_id = queued_pull("0.19.5")
    _teach_seconds_per_record(seconds_per_record)

    with sync_options(PULL_PAGE_SIZE=PAGE):
        page = _page(async_client, transfer_session_id, ASKED)

    assert len(page["results"]) == records


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__an_enlarged_page__timed_by_the_records_it_held(
    queued_pull, async_client, small_timed_pages, monkeypatch
):
    transfer_session_id = queued_pull("0.19.5")
    total = _page(async_client, transfer_session_id, ASKED)["count"]
    timed = []
    monkeypatch.setattr(
        pull_pages, "_learn_page_time", lambda *page_time: timed.append(page_time)
    )

    with sync_options(PULL_PAGE_SIZE=PAGE):
        # a pull's last page: 3 records left
        last = _page(async_client, transfer_session_id, ASKED, total - 3)

    assert len(last["results"]) == 3
    [(records, seconds)] = timed
    assert records == 3
    assert 0 < seconds < 30


@pytest.mark.parametrize(
    "kolibri_version, timed",
    [("0.19.5", True), ("0.18.3", False)],
    ids=["a_page_enlarged__teaches_its_time", "the_clients_own_page__not_timed"],
)
@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_page__sent__timed_if_the_server_sized_it(
    queued_pull, async_client, small_timed_pages, kolibri_version, timed
):
    transfer_session_id = queued_pull(kolibri_version)

    with sync_options(PULL_PAGE_SIZE=PAGE):
        _page(async_client, transfer_session_id, ASKED)

    learnt = pull_pages.seconds_per_record()
    if timed:
        assert 0 < learnt < 30
    else:
        assert learnt is None


def test_page_times__one_slow_page__soon_outweighed(small_timed_pages):
    # 1,000 records in 0.1 s: 3,000 fit in the page's 0.3 s
    pull_pages._learn_page_time(1000, 0.1)
    # one page 300 times as slow (the machine was busy with something else)
    pull_pages._learn_page_time(1000, 30.0)
    assert pull_pages._records_in_time() < 20

    for _ in range(12):
        pull_pages._learn_page_time(1000, 0.1)

    assert pull_pages._records_in_time() >= 0.9 * 3000


def test_page_times__pages_smaller_than_the_timed_least__not_learnt():
    pull_pages._learn_page_time(pull_pages.TIMED_PAGE_MIN_RECORDS - 1, 5.0)

    assert pull_pages.seconds_per_record() is None


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_pull_pages__page_sizes_change_midway__every_record_received_once(
    queued_pull, async_client, small_timed_pages
):
    # the process learns a different speed after each page, so each page has a
    # size of its own; the client still asks at the offset of what it received
    transfer_session_id = queued_pull("0.19.5")
    speeds = [0.3 / 7, 0.3 / 13, 0.3 / 9]
    received, sizes = [], []
    with sync_options(PULL_PAGE_SIZE=PAGE):
        while True:
            _teach_seconds_per_record(speeds[len(sizes) % len(speeds)])
            page = _page(async_client, transfer_session_id, ASKED, len(received))
            if not page["results"]:
                break
            sizes.append(len(page["results"]))
            received.extend(record["model_uuid"] for record in page["results"])

    assert len(set(sizes[:-1])) > 1
    assert len(received) == page["count"]
    assert len(set(received)) == len(received)
