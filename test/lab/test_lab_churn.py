"""
Four stock clients pull and push at the same time while the server's own users
keep writing (the lab's churn: learners renamed, lessons and logs edited, made and
deleted), on SQLite and on PostgreSQL, with the plugin on as the demo runs it.

Once the churn has stopped each client syncs once more, and then every client must
hold the server's facility data record by record: what the server's users wrote
while a stage was serializing is not lost, nor half sent.
"""

from types import SimpleNamespace

import pytest

from sync_lab.bench.demo import MODES
from sync_lab.bench.demo import certain_jobs
from sync_lab.bench.many_clients import churn_line
from sync_lab.bench.many_clients import run_many_clients
from sync_lab.harness.churn import KINDS

pytestmark = pytest.mark.e2e

CLIENTS = 4
CLIENT_RECORDS = 120
#: Rows per second the server's users write: modest, on a 2-core machine that also
#: runs the server and four clients.
CHURN_RATE = 20

BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def churned(request, lab_templates, lab_report):
    database = request.param
    mode = MODES["on"]
    args = SimpleNamespace(churn=CHURN_RATE, sync_timeout=600, job_timeout=300, seed=0)
    messages = []
    run = run_many_clients(
        mode,
        database,
        lab_templates,
        CLIENTS,
        CLIENT_RECORDS,
        args,
        certain_jobs(mode),
        messages.append,
    )
    run.messages = messages
    name = BACKENDS[database]
    lab_report("churn on {}".format(name), churn_line(run.churn))
    longest = run.longest
    if longest is not None:
        lab_report(
            "longest request, {} clients and the churn, {}".format(CLIENTS, name),
            "{:.2f} s ({} {}, stage {})".format(
                longest.duration,
                longest.method,
                longest.path.split("?")[0],
                longest.stage or longest.requested_stage,
            ),
        )
    return run


def _failures(syncs):
    return "\n\n".join(
        "client-{}:\n{}".format(number, sync.tail())
        for number, sync in enumerate(syncs)
        if not sync.ok
    )


def test_churn__every_pull_completes(churned):
    assert len(churned.pulls) == CLIENTS
    assert all(sync.ok for sync in churned.pulls), _failures(churned.pulls)


def test_churn__every_push_completes(churned):
    assert len(churned.pushes) == CLIENTS
    assert all(sync.ok for sync in churned.pushes), _failures(churned.pushes)


def test_churn__every_sync_after_it_completes(churned):
    assert len(churned.final_syncs) == CLIENTS
    assert all(sync.ok for sync in churned.final_syncs), _failures(churned.final_syncs)


def test_churn__wrote_every_kind_while_the_clients_synced(churned):
    writes = churned.churn["writes"]
    assert {kind: writes[kind] > 0 for kind in KINDS} == {kind: True for kind in KINDS}


def test_churn__no_write_of_the_servers_users_failed(churned):
    assert churned.churn["errors"] == {}, churned.churn["error_messages"]


def test_churn__every_client_holds_the_servers_data_record_by_record(churned):
    assert churned.differences is not None, "\n".join(churned.messages[-20:])
    differing = {
        "client-{}".format(number): differences
        for number, differences in enumerate(churned.differences)
        if differences.count
    }
    assert not differing, "server has {} rows changed since serializing".format(
        churned.server_dirty
    )
    assert churned.server_records > 0


def test_churn__push_phase_lasts_at_least_the_slowest_push(churned):
    assert churned.push_phase >= max(push.duration for push in churned.pushes)


def test_churn__the_report_names_the_servers_rsa_implementation(churned):
    assert churned.signing in ("cryptography", "M2Crypto", "pure-Python rsa")


def test_churn__every_other_data_check_passes(churned):
    """No row twice, no transfer left open or record unapplied, every job done."""
    failed = [(what, detail) for what, passed, detail in churned.checks() if not passed]
    assert failed == []
