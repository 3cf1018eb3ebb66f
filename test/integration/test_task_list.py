"""
Kolibri's tasks API lists the plugin's stage jobs, with their facility and a
readable status, to the admins who may see them and to no one else.
"""

import json

import pytest
from django.test import Client
from kolibri.core.auth.constants import role_kinds
from kolibri.core.auth.models import FacilityUser
from kolibri.core.tasks.registry import TaskRegistry
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

TASKS_URL = "/api/tasks/tasks/"


@pytest.fixture
def serialized_and_queuing(background_everything, async_client, server_sync_session):
    """A pull whose serializing job completed and whose queuing job waits."""
    transfer = async_client.create(server_sync_session, push=False)
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    run_stage_jobs()
    async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    queued_stage_jobs()
    return transfer


def _listed_stage_jobs(user=None):
    client = Client()
    if user is not None:
        client.force_login(user)
    response = client.get(TASKS_URL, {"queue": SYNC_EXTRAS_QUEUE})
    assert response.status_code == 200, response.content
    return {job["extra_metadata"]["stage"]: job for job in response.json()}


def _user(facility, username, role=None):
    user = FacilityUser.objects.create(username=username, facility=facility)
    if role is not None:
        facility.add_role(user, role)
    return user


def test_task_list__superuser__lists_stage_jobs_with_facility_and_status(
    serialized_and_queuing, facility
):
    superuser = FacilityUser.objects.create_superuser(
        "superuser", "password", facility=facility
    )

    jobs = _listed_stage_jobs(superuser)

    serializing = jobs[transfer_stages.SERIALIZING]
    queuing = jobs[transfer_stages.QUEUING]
    assert serializing["status"] == "COMPLETED"
    assert serializing["percentage"] == 1
    assert serializing["facility_id"] == facility.id
    metadata = serializing["extra_metadata"]
    assert metadata["facility_name"] == "Riverside School"
    assert serialized_and_queuing["id"] not in json.dumps(serializing)
    # the suite's facility was created unserialized: every row of it is changed
    assert metadata["records"] >= 27
    assert metadata["status_text"] == (
        "Serializing done for Riverside School: {} records".format(metadata["records"])
    )
    assert queuing["status"] == "QUEUED"
    assert queuing["percentage"] == 0
    assert queuing["extra_metadata"]["status_text"] == (
        "Queuing for Riverside School: waiting for a worker"
    )


def test_task_list__admin_of_the_facility__lists_stage_jobs(
    serialized_and_queuing, facility
):
    admin = _user(facility, "admin", role=role_kinds.ADMIN)

    jobs = _listed_stage_jobs(admin)

    assert set(jobs) == {transfer_stages.SERIALIZING, transfer_stages.QUEUING}


def test_task_list__learner_of_the_facility__lists_none(
    serialized_and_queuing, facility
):
    learner = _user(facility, "learner")

    assert _listed_stage_jobs(learner) == {}


def test_task_list__not_signed_in__lists_none(serialized_and_queuing):
    assert _listed_stage_jobs() == {}


@pytest.fixture
def plugin_removed_unclean():
    """
    The plugin's task no longer registered, its jobs left in job storage: the
    plugin removed without being disabled, or disabled with its release failed.
    Kolibri's tasks API lists such jobs, kwargs and metadata included, to anyone.
    """
    registered = TaskRegistry.pop(RUN_STAGE_TASK)
    try:
        yield
    finally:
        TaskRegistry[RUN_STAGE_TASK] = registered


def test_task_list__plugin_removed_unclean__learner_reads_no_session_id(
    serialized_and_queuing, facility, server_sync_session, plugin_removed_unclean
):
    learner = _user(facility, "learner")
    client = Client()
    client.force_login(learner)

    response = client.get(TASKS_URL, {"queue": SYNC_EXTRAS_QUEUE})

    assert response.status_code == 200, response.content
    listed = response.content.decode()
    # the stage jobs are listed, as Kolibri lists any unregistered job
    assert listed.count('"' + RUN_STAGE_TASK + '"') == 2
    for session_id in (serialized_and_queuing["id"], server_sync_session.id):
        assert session_id not in listed
