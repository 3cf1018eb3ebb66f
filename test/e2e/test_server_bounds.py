"""
The bounds a server puts on its stage jobs, against real Kolibri servers on SQLite
over loopback HTTP, with Kolibri's own ``sync`` command as the client:

- a web server that runs no job workers ends a stage whose job nobody picks up
  within ``STAGE_JOB_START_TIMEOUT``, so its client stops instead of polling for
  ever, and cancels the job;
- through Kolibri's tasks API, stage jobs show to admins of their facility only,
  and only a superuser may run or reschedule the job that clears them.
"""

import json
import time
from types import SimpleNamespace

import pytest
import requests

from kolibri_sync_extras_plugin.admin.retention import RETENTION_JOB_ID
from sync_lab.harness.bounds import create_users_of_each_role
from sync_lab.harness.jobs import list_stage_jobs
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.split import SplitKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING

pytestmark = pytest.mark.e2e

CREDENTIALS = (DEFAULT_CREDENTIALS.username, DEFAULT_CREDENTIALS.password)


def _whole_log(server):
    with open(server.log_path, errors="replace") as log:
        return log.read()


# -- a web server with no job workers -------------------------------------------

START_TIMEOUT_SECONDS = 10
#: Room past the start timeout for starting the client's command, the sync's
#: first requests and morango's polling backoff, on a busy machine.
SLACK_SECONDS = 60


@pytest.fixture(scope="module")
def workerless(tmp_path_factory, lab_templates):
    """A stock client's sync with a server whose job workers were never started."""
    root = tmp_path_factory.mktemp("workerless")
    server, facility = lab_templates.new_server(
        "sqlite",
        "workerless-server",
        root=root,
        instance_class=SplitKolibriInstance,
        plugin=True,
        sync_options=dict(
            BACKGROUND_EVERYTHING,
            STAGE_JOB_START_TIMEOUT=START_TIMEOUT_SECONDS,
            INLINE_STAGE_RECORDS=0,
        ),
    )
    client = lab_templates.new_client("workerless-client", root=root)
    outcome = SimpleNamespace()
    with server, client:
        server.start()
        started = time.monotonic()
        outcome.sync = client.sync(
            server.base_url, facility["id"], *CREDENTIALS, timeout=600, check=False
        )
        outcome.took = time.monotonic() - started
        outcome.jobs = list_stage_jobs(server)
        outcome.server_log = _whole_log(server)
    return outcome


def test_no_worker__stock_clients_sync__fails(workerless):
    assert not workerless.sync.ok, workerless.sync.tail()


def test_no_worker__client__stops_within_the_start_timeout(workerless):
    assert workerless.took < START_TIMEOUT_SECONDS + SLACK_SECONDS, (
        workerless.sync.tail()
    )


def test_no_worker__server_log__says_no_worker_picked_the_job_up(workerless):
    assert "no background worker picked it up" in workerless.server_log


def test_no_worker__unstarted_stage_job__cancelled(workerless):
    assert [job["job_state"] for job in workerless.jobs] == ["CANCELED"], (
        workerless.jobs
    )


# -- Kolibri's tasks API, by role -----------------------------------------------

TASKS_PATH = "/api/tasks/tasks/"
SESSION_PATH = "/api/auth/session/"
#: Kolibri's name for Django's CSRF cookie.
CSRF_COOKIE = "kolibri_csrftoken"
CLEAR_FINISHED_STAGE_JOBS = "kolibri_sync_extras_plugin.tasks.clear_finished_stage_jobs"
FAR_OFF = {
    "enqueue_at": "9999-01-01T00:00:00Z",
    "repeat_interval": 600,
    "repeat": None,
}
USER_PASSWORD = "bounds-password"
ROLES = ["anonymous", "learner", "coach", "facility admin", "superuser"]
NOT_ADMINS = ["anonymous", "learner", "coach"]
NOT_SUPERUSERS = ["anonymous", "learner", "coach", "facility admin"]


def _browser(base_url):
    """
    An HTTP session that, as Kolibri's front end does, refreshes its session first
    (which sets the CSRF cookie) and sends the token back with each change.

    :rtype: requests.Session
    """
    http = requests.Session()
    http.put(base_url + SESSION_PATH + "current/", json={}).raise_for_status()
    http.headers["X-CSRFToken"] = http.cookies[CSRF_COOKIE]
    return http


def _signed_in(base_url, facility_id, username, password):
    """
    A :func:`_browser` session signed in through Kolibri's session API (which
    gives it a new CSRF token).

    :rtype: requests.Session
    """
    http = _browser(base_url)
    http.post(
        base_url + SESSION_PATH,
        json={"username": username, "password": password, "facility": facility_id},
    ).raise_for_status()
    http.headers["X-CSRFToken"] = http.cookies[CSRF_COOKIE]
    return http


def _asked(response):
    return SimpleNamespace(status=response.status_code, body=response.text)


@pytest.fixture(scope="module")
def tasks_api(tmp_path_factory, lab_templates):
    """
    Each role's answers from Kolibri's tasks API, on a server whose job storage
    holds the stage jobs of a stock client's pull.
    """
    root = tmp_path_factory.mktemp("tasks-api")
    server, facility = lab_templates.new_server(
        "sqlite",
        "tasks-api-server",
        root=root,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    client = lab_templates.new_client("tasks-api-client", root=root)
    outcome = SimpleNamespace(answers={})
    with server, client:
        server.start()
        client.sync(server.base_url, facility["id"], *CREDENTIALS, push=False)
        outcome.stage_jobs = list_stage_jobs(server)
        usernames = server.call(
            create_users_of_each_role,
            facility_id=facility["id"],
            password=USER_PASSWORD,
        )
        sessions = {"anonymous": _browser(server.base_url)}
        for who, username in usernames.items():
            sessions[who] = _signed_in(
                server.base_url, facility["id"], username, USER_PASSWORD
            )
        sessions["superuser"] = _signed_in(
            server.base_url, facility["id"], *CREDENTIALS
        )
        tasks_url = server.base_url + TASKS_PATH
        for who in ROLES:
            http = sessions[who]
            outcome.answers[who] = SimpleNamespace(
                listed=_asked(http.get(tasks_url, params={"queue": "sync_extras"})),
                enqueued=_asked(
                    http.post(tasks_url, json={"type": CLEAR_FINISHED_STAGE_JOBS})
                ),
                rescheduled=_asked(
                    http.patch(
                        tasks_url + RETENTION_JOB_ID + "/",
                        json={"enqueue_args": FAR_OFF},
                    )
                ),
            )
    return outcome


def _stage_jobs_listed(tasks_api, who):
    listed = tasks_api.answers[who].listed
    if listed.status != 200:
        return set()
    listed_ids = {job["id"] for job in json.loads(listed.body)}
    return listed_ids & {job["job_id"] for job in tasks_api.stage_jobs}


def test_tasks_api__the_pull__left_stage_jobs(tasks_api):
    assert {job["direction"] for job in tasks_api.stage_jobs} == {"pull"}


@pytest.mark.parametrize("who", NOT_ADMINS)
def test_tasks_api__non_admin__sees_no_stage_job(tasks_api, who):
    listed = tasks_api.answers[who].listed

    assert listed.status in (200, 403), listed.body
    assert _stage_jobs_listed(tasks_api, who) == set()


@pytest.mark.parametrize("who", ["facility admin", "superuser"])
def test_tasks_api__admin__sees_the_stage_jobs(tasks_api, who):
    assert _stage_jobs_listed(tasks_api, who) == {
        job["job_id"] for job in tasks_api.stage_jobs
    }


@pytest.mark.parametrize("who", NOT_ADMINS)
def test_tasks_api__non_admin__never_shown_the_pulls_transfer_session(tasks_api, who):
    [pull_session] = {job["transfer_session_id"] for job in tasks_api.stage_jobs}
    answers = tasks_api.answers[who]

    assert all(
        pull_session not in answer.body
        for answer in (answers.listed, answers.enqueued, answers.rescheduled)
    )


@pytest.mark.parametrize("who", NOT_SUPERUSERS)
def test_tasks_api__anyone_but_a_superuser__cannot_run_the_retention_job(
    tasks_api, who
):
    enqueued = tasks_api.answers[who].enqueued

    assert enqueued.status == 403, enqueued.body
    assert "CSRF" not in enqueued.body


@pytest.mark.parametrize("who", NOT_SUPERUSERS)
def test_tasks_api__anyone_but_a_superuser__cannot_reschedule_the_retention_job(
    tasks_api, who
):
    rescheduled = tasks_api.answers[who].rescheduled

    assert rescheduled.status == 403, rescheduled.body
    assert "CSRF" not in rescheduled.body


def test_tasks_api__superuser__allowed_to_run_and_reschedule_the_retention_job(
    tasks_api,
):
    """
    The job the superuser enqueues may be running by the time of the reschedule,
    which Kolibri then answers with 409: allowed, but too late.
    """
    answers = tasks_api.answers["superuser"]

    assert answers.enqueued.status == 200, answers.enqueued.body
    assert answers.rescheduled.status in (200, 409), answers.rescheduled.body
