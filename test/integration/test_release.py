"""
Disabling the plugin while stages wait in the background: releasing them first
ends each for its client and leaves no job of the plugin that Kolibri, without the
plugin's task registered, would list to anyone.
"""

import io
import pathlib

import pytest
from django.core.management import call_command
from django.test import Client
from kolibri.core.tasks.registry import TaskRegistry
from kolibri.plugins import KolibriPluginBase
from morango.constants import transfer_statuses

from kolibri_sync_extras_plugin.kolibri_plugin import SyncExtrasPlugin
from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

TASKS_URL = "/api/tasks/tasks/"


@pytest.fixture
def task_unregistered(monkeypatch):
    """The tasks API as it is once the plugin is disabled: its task unknown."""
    TaskRegistry[RUN_STAGE_TASK]  # fill the lazy registry before changing it
    monkeypatch.delitem(TaskRegistry, RUN_STAGE_TASK)


def _listed_to_anyone():
    response = Client().get(TASKS_URL, {"queue": SYNC_EXTRAS_QUEUE})
    assert response.status_code == 200, response.content
    return response.json()


def _release():
    out = io.StringIO()
    call_command("sync_extras_release", stdout=out)
    return out.getvalue()


def test_task_unregistered__jobs_left__listed_to_anyone(
    pull_at_serializing, task_unregistered
):
    # what happens without a release: the reason for it
    queued_stage_jobs()

    assert [job["id"] for job in _listed_to_anyone()] != []


def test_release__stage_waiting_on_its_job__client_sees_errored(
    pull_at_serializing, async_client
):
    queued_stage_jobs()

    _release()

    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


def test_release__jobs_in_storage__all_cleared_and_none_listed(
    pull_at_serializing, task_unregistered
):
    queued_stage_jobs()

    said = _release()

    assert stage_jobs() == []
    assert _listed_to_anyone() == []
    assert said.strip() == "1 background stage(s) ended as errored, 1 job(s) cleared"


def test_plugin_disable__stage_waiting__released(
    pull_at_serializing, async_client, monkeypatch
):
    queued_stage_jobs()
    # the configuration change itself is Kolibri's, and would outlast the test
    monkeypatch.setattr(KolibriPluginBase, "disable", lambda plugin: None)

    SyncExtrasPlugin().disable()

    assert stage_jobs() == []
    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED


def _readme_release_snippet():
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index('kolibri manage shell -c "') + len('kolibri manage shell -c "')
    return readme[start : readme.index('"\n```', start)]


def test_readme_release_one_liner__stage_waiting__errored_and_jobs_cleared(
    pull_at_serializing, async_client
):
    queued_stage_jobs()

    exec(_readme_release_snippet(), {})

    assert stage_jobs() == []
    polled = async_client.get(pull_at_serializing["id"])
    assert polled["transfer_stage_status"] == transfer_statuses.ERRORED
