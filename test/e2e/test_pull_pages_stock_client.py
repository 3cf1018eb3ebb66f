"""
A stock client's whole pull from a real server with larger pull pages: it asks
for small pages, gets the server's larger ones, needs only as many, and ends with
exactly the server's records. The server's side of it, in process, is in
``test/integration/test_pull_pages.py``.
"""

import math
from urllib.parse import parse_qs
from urllib.parse import urlparse

import pytest

from sync_lab.harness.dataset import store_records
from sync_lab.harness.proxy import BUFFERS_PATH
from sync_lab.harness.proxy import TimingProxy
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS

pytestmark = pytest.mark.e2e


def test_stock_client_pull__larger_pages__ends_with_exactly_the_servers_records(
    tmp_path, lab_templates
):
    asked, page_size = 30, 100
    server, facility = lab_templates.new_server(
        "sqlite",
        "server-pages",
        root=tmp_path,
        plugin=True,
        sync_options={"PULL_PAGE_SIZE": page_size},
    )
    client = lab_templates.new_client("client-pages", root=tmp_path)
    with server, client:
        server.start()
        with TimingProxy(server.base_url) as proxy:
            pull = client.sync(
                proxy.url,
                facility["id"],
                DEFAULT_CREDENTIALS.username,
                DEFAULT_CREDENTIALS.password,
                push=False,
                check=False,
                chunk_size=asked,
            )
            exchanges = proxy.exchanges
        assert pull.ok, "{}\n\nserver log:\n{}".format(pull.tail(), server.log_tail())
        server_records = server.call(store_records, facility_id=facility["id"])
        client_records = client.call(store_records, facility_id=facility["id"])

    pages = [
        e for e in exchanges if e.method == "GET" and e.path.startswith(BUFFERS_PATH)
    ]
    records_total = max(e.records_total or 0 for e in exchanges)
    assert records_total > 2 * page_size
    # the client asked for small pages, and needed only as many large ones
    assert {parse_qs(urlparse(e.path).query)["limit"][0] for e in pages} == {str(asked)}
    assert len(pages) == math.ceil(records_total / page_size)
    assert client_records == server_records
    assert len(server_records) >= records_total
