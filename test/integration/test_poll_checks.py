"""
A server process checks a polled stage's job at most every few seconds of a
client's polls: each check reads job storage, and a client polls every second.
"""

import pytest

from kolibri_sync_extras_plugin.request import hooks
from kolibri_sync_extras_plugin.request import poll
from kolibri_sync_extras_plugin.request.poll import check_is_due

from ..helpers.constants import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def checks_every_five_seconds(monkeypatch):
    monkeypatch.setattr(poll, "POLL_CHECK_SECONDS", 5.0)


def test_check_is_due__once_per_interval_for_each_session(checks_every_five_seconds):
    assert check_is_due("a", now=100.0)
    assert not check_is_due("a", now=104.9)
    assert check_is_due("b", now=104.9)
    assert check_is_due("a", now=105.0)


def test_client_polls__within_the_interval__stage_checked_once(
    checks_every_five_seconds, pull_at_serializing, async_client, monkeypatch
):
    checked = []
    monkeypatch.setattr(hooks, "check_background_stage", checked.append)

    async_client.get(pull_at_serializing["id"])
    async_client.get(pull_at_serializing["id"])

    assert checked == [pull_at_serializing["id"]]


def test_client_polls__interval_zero__every_poll_checked(
    pull_at_serializing, async_client, monkeypatch
):
    checked = []
    monkeypatch.setattr(hooks, "check_background_stage", checked.append)

    async_client.get(pull_at_serializing["id"])
    async_client.get(pull_at_serializing["id"])

    assert checked == [pull_at_serializing["id"]] * 2
