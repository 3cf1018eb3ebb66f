"""
What a stage job's metadata says of its facility is what Kolibri's own helpers say,
read once per certificate rather than on every stage request.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from kolibri.core.auth.sync_event_hook_utils import get_dataset_id
from morango.sync.context import LocalSessionContext

from kolibri_sync_extras_plugin.request.enqueue import dataset_of

from ..helpers.constants import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def test_dataset_of__a_servers_sync_session__the_dataset_kolibri_finds(
    server_sync_session, facility
):
    context = LocalSessionContext(sync_session=server_sync_session)

    assert dataset_of(server_sync_session) == get_dataset_id(context)
    assert dataset_of(server_sync_session) == facility.dataset_id


def test_dataset_of__asked_again__reads_no_certificate(server_sync_session):
    dataset_of(server_sync_session)

    with CaptureQueriesContext(connection) as queries:
        dataset_of(server_sync_session)

    assert [q["sql"] for q in queries.captured_queries] == []
