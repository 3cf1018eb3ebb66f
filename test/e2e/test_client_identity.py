"""
The caps count a client by the certificate it signs its sync sessions with, not
by the instance id it claims. Against a real server on SQLite whose stage jobs
cannot run yet (the lab holds the writers' turn), a client with its own
certificate opens sync sessions over HTTP: the first two claim a victim device's
instance id, the rest a fresh id each. Only two of its stages pass its cap, and
the victim, whose id it claimed, still syncs.
"""

import uuid
from types import SimpleNamespace

import pytest

from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.flood import ask_for_stages
from sync_lab.harness.flood import holding_the_writers_turn
from sync_lab.harness.flood import wait_for_unfinished_stage_jobs
from sync_lab.harness.identities import claimed_instance_ids
from sync_lab.harness.identities import current_instance_id
from sync_lab.harness.identities import open_sync_sessions_claiming
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS

from ..helpers.constants import BACKGROUND_EVERYTHING

pytestmark = pytest.mark.e2e

PER_CLIENT_CAP = 2
ROTATED = 3


@pytest.fixture(scope="module")
def liar(tmp_path_factory, lab_templates):
    root = tmp_path_factory.mktemp("liar")
    server, facility = lab_templates.new_server(
        "sqlite",
        "lied-to-server",
        root=root,
        plugin=True,
        sync_options=dict(
            BACKGROUND_EVERYTHING, MAX_STAGE_JOBS_PER_CLIENT=PER_CLIENT_CAP
        ),
    )
    liar_client = lab_templates.new_client("liar-client", root=root)
    victim = lab_templates.new_client("victim-client", root=root)
    credentials = (DEFAULT_CREDENTIALS.username, DEFAULT_CREDENTIALS.password)
    outcome = SimpleNamespace()
    with server, liar_client, victim:
        server.start()
        # each device gets the facility, and a certificate of its own
        for device in (liar_client, victim):
            device.sync(server.base_url, facility["id"], *credentials, push=False)
        outcome.victim_id = victim.call(current_instance_id)
        claimed = [outcome.victim_id] * PER_CLIENT_CAP + [
            uuid.uuid4().hex for _ in range(ROTATED)
        ]
        sessions = liar_client.call(
            open_sync_sessions_claiming,
            base_url=server.base_url,
            facility_id=facility["id"],
            username=credentials[0],
            password=credentials[1],
            instance_ids=claimed,
        )
        outcome.sessions_recorded = server.call(
            claimed_instance_ids,
            sync_session_ids=sessions["sync_session_ids"],
        )
        with holding_the_writers_turn(server):
            outcome.answers = ask_for_stages(
                server.base_url, sessions["sync_session_ids"], sessions["filter"]
            )
            outcome.liars_jobs = server.call(
                wait_for_unfinished_stage_jobs, count=0, wait=0
            )
            sync = BackgroundSync(
                victim,
                server.base_url,
                facility["id"],
                *credentials,
                push=False,
                timeout=600,
            )
            sync.start()
            # the victim's first stage waits beside the liar's (refused, it never
            # does: the wait runs out)
            outcome.waiting = server.call(
                wait_for_unfinished_stage_jobs,
                count=len(outcome.liars_jobs) + 1,
                wait=120,
            )
        outcome.victim_sync = sync.wait(600)
        outcome.server_log = server.log_tail(60)
    return outcome


def test_liar__morango_recorded_the_instance_ids_it_claimed(liar):
    assert liar.sessions_recorded[:PER_CLIENT_CAP] == [liar.victim_id] * PER_CLIENT_CAP
    assert len(set(liar.sessions_recorded[PER_CLIENT_CAP:])) == ROTATED


def test_liar__stages_up_to_its_cap__accepted(liar):
    accepted = [a for a in liar.answers if a["status"] == 200]

    assert len(accepted) == PER_CLIENT_CAP
    assert {a["stage_status"] for a in accepted} == {"started"}


def test_liar__rotating_instance_ids__refused_past_its_cap(liar):
    refused = liar.answers[PER_CLIENT_CAP:]

    assert [a["status"] for a in refused] == [503] * ROTATED, liar.answers
    assert all(
        "[Sync] MAX_STAGE_JOBS_PER_CLIENT = {}".format(PER_CLIENT_CAP) in a["detail"]
        for a in refused
    )


def test_victim__its_id_claimed__its_stage_queued_beside_the_liars(liar):
    assert len(liar.liars_jobs) == PER_CLIENT_CAP
    assert len(liar.waiting) == PER_CLIENT_CAP + 1
    assert len(set(liar.waiting)) == 2


def test_victim__its_id_claimed__still_syncs(liar):
    assert liar.victim_sync.ok, liar.victim_sync.tail() + "\n" + liar.server_log
