"""
The caps on stage jobs hold across a server's processes: nginx in front of 4
uwsgi processes, and one client asking for many stages at the same moment. Its
requests are counted in several processes side by side, and of all of them
exactly as many pass as its cap allows; the rest are refused with a 503 naming
the cap. With the reservation kept in each process's memory, as it was before,
each process let its own requests up to the cap: 6 passed a cap of 3.

The stage jobs cannot run meanwhile (the lab holds the writers' turn, as a long
stage would), so the accepted ones stay unfinished and keep their places.
"""

import uuid
from types import SimpleNamespace

import pytest

from sync_lab.harness.flood import ask_for_stages_at_once
from sync_lab.harness.flood import holding_the_writers_turn
from sync_lab.harness.flood import open_sync_sessions
from sync_lab.harness.flood import wait_for_unfinished_stage_jobs
from sync_lab.harness.uwsgi_server import UwsgiKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING

pytestmark = pytest.mark.e2e

PER_CLIENT_CAP = 3
#: Requests at once: several per uwsgi process.
ASKED = 16


@pytest.fixture(scope="module")
def asked_at_once(tmp_path_factory, lab_templates, uwsgi_and_nginx):
    root = tmp_path_factory.mktemp("uwsgi-caps")
    server, facility = lab_templates.new_server(
        "sqlite",
        "caps-server",
        root=root,
        instance_class=UwsgiKolibriInstance,
        plugin=True,
        sync_options=dict(
            BACKGROUND_EVERYTHING, MAX_STAGE_JOBS_PER_CLIENT=PER_CLIENT_CAP
        ),
    )
    outcome = SimpleNamespace()
    with server:
        server.start()
        sessions = server.call(
            open_sync_sessions,
            count=ASKED,
            client_instance_id=uuid.uuid4().hex,
            facility_id=facility["id"],
        )
        outcome.client = sessions["client_key"]
        with holding_the_writers_turn(server):
            outcome.answers = ask_for_stages_at_once(
                server.base_url, sessions["sync_session_ids"], sessions["filter"]
            )
            outcome.unfinished = server.call(
                wait_for_unfinished_stage_jobs, count=ASKED, wait=5
            )
        outcome.uwsgi_workers = server.pids()["uwsgi worker"]
    return outcome


def _accepted(answers):
    return [answer for answer in answers if answer["status"] == 200]


def test_every_request_answered(asked_at_once):
    assert all(answer is not None for answer in asked_at_once.answers)
    assert {answer["status"] for answer in asked_at_once.answers} <= {200, 503}


def test_exactly_the_cap_accepted(asked_at_once):
    assert len(_accepted(asked_at_once.answers)) == PER_CLIENT_CAP


def test_the_rest__refused_naming_the_cap(asked_at_once):
    refused = [answer for answer in asked_at_once.answers if answer["status"] == 503]
    assert len(refused) == ASKED - PER_CLIENT_CAP
    assert all("MAX_STAGE_JOBS_PER_CLIENT" in str(a["detail"]) for a in refused)


def test_job_storage__the_cap_of_unfinished_jobs(asked_at_once):
    assert asked_at_once.unfinished == [asked_at_once.client] * PER_CLIENT_CAP


def test_uwsgi_ran_several_processes(asked_at_once):
    assert len(asked_at_once.uwsgi_workers) > 1
