"""
The job that clears finished stage jobs is the server's own: through Kolibri's
tasks API only a superuser may see, run or reschedule it, and a schedule moved
far off is put back the next time a stage job is queued.
"""

import datetime
import json

import pytest
from django.test import Client
from django.utils import timezone
from kolibri.core.auth.constants import role_kinds
from kolibri.core.auth.models import FacilityUser
from kolibri.core.tasks.main import job_storage

from kolibri_sync_extras_plugin.admin.retention import RETENTION_JOB_ID
from kolibri_sync_extras_plugin.admin.retention import schedule_retention
from kolibri_sync_extras_plugin.compat import aware_utc
from kolibri_sync_extras_plugin.tasks import clear_finished_stage_jobs

from ..helpers.constants import ALL_DATABASES
from ..helpers.job_rows import update_job_row

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

TASKS_URL = "/api/tasks/tasks/"
JOB_URL = TASKS_URL + RETENTION_JOB_ID + "/"
FAR_OFF = {"enqueue_at": "9999-01-01T00:00:00Z", "repeat_interval": 600}


def _client(user):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def users(facility):
    def user(username, role=None):
        created = FacilityUser.objects.create(username=username, facility=facility)
        if role is not None:
            facility.add_role(created, role)
        return created

    return {
        "anonymous": None,
        "learner": user("learner"),
        "coach": user("coach", role_kinds.COACH),
        "facility admin": user("admin", role_kinds.ADMIN),
        "superuser": FacilityUser.objects.create_superuser(
            "superuser", "password", facility=facility
        ),
    }


@pytest.mark.parametrize("who", ["anonymous", "learner", "coach", "facility admin"])
def test_retention_job__anyone_but_a_superuser__cannot_read_run_or_reschedule_it(
    pull_at_serializing, users, who
):
    client = _client(users[who])
    before = job_storage.get_orm_job(RETENTION_JOB_ID).scheduled_time

    read = client.get(JOB_URL)
    rescheduled = client.patch(
        JOB_URL, json.dumps({"enqueue_args": FAR_OFF}), content_type="application/json"
    )
    enqueued = client.post(
        TASKS_URL,
        json.dumps({"type": clear_finished_stage_jobs.func_string}),
        content_type="application/json",
    )

    assert read.status_code == 403
    assert rescheduled.status_code == 403
    assert enqueued.status_code == 403
    assert job_storage.get_orm_job(RETENTION_JOB_ID).scheduled_time == before


def test_retention_job__superuser__can_read_it(pull_at_serializing, users):
    response = _client(users["superuser"]).get(JOB_URL)

    assert response.status_code == 200, response.content
    assert response.json()["type"] == clear_finished_stage_jobs.func_string


def test_retention_job__moved_far_off__scheduled_back_within_its_interval(
    pull_at_serializing,
):
    update_job_row(
        RETENTION_JOB_ID,
        scheduled_time=datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc),
    )

    schedule_retention(clear_finished_stage_jobs)

    scheduled = aware_utc(job_storage.get_orm_job(RETENTION_JOB_ID).scheduled_time)
    assert scheduled <= timezone.now() + datetime.timedelta(seconds=600 + 5)
