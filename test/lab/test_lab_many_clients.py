"""
How the demo's many-clients mode judges a run: its data checks and its report.
"""

from sync_lab.bench.many_clients import ManyClientsRun
from sync_lab.bench.many_clients import many_clients_chart_figures
from sync_lab.bench.many_clients import push_phase_seconds
from sync_lab.bench.many_clients import render_many_clients
from sync_lab.bench.many_clients import slow_request_lines
from sync_lab.bench.many_clients import write_many_clients_chart
from sync_lab.harness.checks import Differences
from sync_lab.harness.cpu import PhaseCpu
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.instances import CommandResult
from sync_lab.harness.proxy import Exchange

CREATED = {
    "users": 10,
    "memberships": 10,
    "summary_logs": 40,
    "session_logs": 80,
    "total": 140,
}


def _sync(returncode=0, duration=30.0):
    return CommandResult(["sync"], returncode, duration, "")


def _state(counts, jobs=()):
    return {
        "counts": counts,
        "duplicates": {kind: 0 for kind in ("users", "memberships")},
        "open_transfer_sessions": [],
        "undeserialized": 0,
        "jobs": list(jobs),
    }


def _client_counts():
    """A client that pulled a facility of 100 learners and added its own."""
    counts = {kind: 1000 for kind in COUNTED}
    counts.update(classrooms=2)
    for kind, key in (
        ("users", "users"),
        ("memberships", "memberships"),
        ("summary_logs", "summary_logs"),
        ("session_logs", "session_logs"),
        ("store", "total"),
    ):
        counts[kind] += CREATED[key]
    return counts


def _clean_run(clients=2):
    run = ManyClientsRun("on", "sqlite", clients)
    run.pulls = [_sync() for _ in range(clients)]
    run.pushes = [_sync() for _ in range(clients)]
    run.created = [dict(CREATED) for _ in range(clients)]
    run.client_states = [_state(_client_counts()) for _ in range(clients)]
    server = {kind: value for kind, value in _client_counts().items()}
    for kind, key in (
        ("users", "users"),
        ("memberships", "memberships"),
        ("summary_logs", "summary_logs"),
        ("session_logs", "session_logs"),
        ("store", "total"),
    ):
        server[kind] += CREATED[key] * (clients - 1)
    run.server_state = _state(
        server, jobs=[{"stage": "cleanup", "job_state": "COMPLETED"}]
    )
    exchange = Exchange("PATCH", "/api/morango/v1/transfersessions/abc/", 0.0)
    exchange.duration = 0.4
    exchange.status = 200
    run.push_exchanges = [exchange]
    return run


def test_many_clients_run__every_client_counted__passes():
    run = _clean_run()

    assert run.ok, run.checks()


def test_many_clients_run__server_missing_one_clients_logs__fails():
    run = _clean_run()
    run.server_state["counts"]["session_logs"] -= 1

    failed = [what for what, passed, _ in run.checks() if not passed]

    assert failed == ["server holds every client's records and its own"]


def test_many_clients_run__one_push_failed__fails_naming_the_client():
    run = _clean_run()
    run.pushes[1] = _sync(returncode=1)

    [(what, detail)] = [(w, d) for w, passed, d in run.checks() if not passed]

    assert (what, detail) == ("every push completed", "client-1")


def test_many_clients_run__unfinished_stage_job__fails():
    run = _clean_run()
    run.server_state["jobs"].append({"stage": "deserializing", "job_state": "QUEUED"})

    assert not run.ok


CHURN_REPORT = {
    "writes": {"learner_renames": 30, "log_updates": 50},
    "total": 80,
    "errors": {},
    "error_messages": [],
    "seconds": 4.0,
    "rate": 20.0,
    "target_rate": 20.0,
}


def _churned_run(clients=2):
    """A clean run with the server's users writing: every count moved."""
    run = _clean_run(clients)
    run.churn_rate = 20.0
    run.churn = dict(CHURN_REPORT)
    run.final_syncs = [_sync() for _ in range(clients)]
    run.server_state["counts"]["session_logs"] += 37
    run.server_records = 900
    run.server_dirty = 0
    run.differences = [Differences(0, []) for _ in range(clients)]
    return run


def test_many_clients_run__churn_and_same_data_everywhere__passes():
    run = _churned_run()

    assert run.ok, run.checks()


def test_many_clients_run__churn_and_one_client_differs__fails_naming_it():
    run = _churned_run()
    run.differences[1] = Differences(1, ["facilityuser u1: only on the server"])

    [(what, detail)] = [(w, d) for w, passed, d in run.checks() if not passed]

    assert what == "every client holds the server's data, record by record"
    assert detail.startswith("client-1: 1 records differ")


def test_many_clients_run__churn_and_a_failed_last_sync__fails():
    run = _churned_run()
    run.final_syncs[0] = _sync(returncode=1)

    failed = [what for what, passed, _ in run.checks() if not passed]

    assert failed == ["every sync after the churn completed"]


def test_render__churn__syncs_same_data_and_rate_in_the_summary():
    text = render_many_clients([_churned_run()])

    assert "churn: 80 writes in 4 s, 20.0/s of 20 aimed at" in text
    assert text.rstrip().endswith("6/6       2/2        20 of 20      pass")


def test_render__summary_line__longest_request_and_verdict():
    text = render_many_clients([_clean_run()])

    assert "2        sqlite      on      0.400 s" in text
    assert text.rstrip().endswith("pass")


def _exchange(method, path, duration):
    exchange = Exchange(method, path, 0.0)
    exchange.duration = duration
    exchange.status = 200
    return exchange


def test_render__session_set_up_slower_than_the_stages__longest_stage_request_apart():
    run = _clean_run()
    run.push_exchanges = [
        _exchange("POST", "/api/morango/v1/certificates/", 9.0),
        _exchange("POST", "/api/morango/v1/transfersessions/", 7.0),
        _exchange("GET", "/api/morango/v1/transfersessions/abc/", 0.3),
        _exchange("POST", "/api/morango/v1/buffers/", 0.6),
        _exchange("PATCH", "/api/morango/v1/transfersessions/abc/", 0.5),
    ]

    text = render_many_clients([run])

    assert "longest push stage request: 0.600 s (POST /api/morango/v1/buffers/" in text
    assert "2        sqlite      on      9.000 s          0.600 s" in text


def _timed_exchange(method, path, started, duration, requested_stage=None):
    exchange = _exchange(method, path, duration)
    exchange.started = started
    exchange.requested_stage = requested_stage
    return exchange


def test_slow_requests__grouped_by_phase_and_kind__with_the_crowd_each_met():
    run = _clean_run()
    buffers = "/api/morango/v1/buffers/"
    session = "/api/morango/v1/transfersessions/abc/"
    run.push_exchanges = [
        # two uploads over a second: the first began alone, the second beside
        # the first upload and a poll
        _timed_exchange("POST", buffers, 10.0, 1.5, "transferring"),
        _timed_exchange("GET", session, 10.2, 0.1),
        _timed_exchange("POST", buffers, 10.25, 1.2, "transferring"),
        _timed_exchange("DELETE", session, 20.0, 3.0, "cleanup"),
        _timed_exchange("POST", buffers, 30.0, 0.9, "transferring"),
    ]

    lines = slow_request_lines(run)

    assert lines[1].split() == [
        "push", "2", "x", "1.500", "s", "0", "/", "2",
        "POST", "buffers", "(transferring)",
    ]  # fmt: skip
    assert lines[2].split() == [
        "push", "1", "x", "3.000", "s", "0", "/", "0",
        "DELETE", "transfersessions", "(cleanup)",
    ]  # fmt: skip
    assert len(lines) == 3
    assert "\n".join(lines) in render_many_clients([run])


def test_slow_requests__none_over_a_second__no_lines():
    assert slow_request_lines(_clean_run()) == []


def test_render__cpu_of_each_phase__in_the_report_and_the_push_phase_in_the_summary():
    run = _clean_run()
    run.cpu = {
        "pull": PhaseCpu(server_seconds=40.0, clients_seconds=90.5, wall_seconds=80.0),
        "push": PhaseCpu(server_seconds=35.2, clients_seconds=60.0, wall_seconds=62.5),
    }
    run.push_phase = 70.0
    # the stage jobs after the last client worked 4.8 s more
    run.push_phase_server_cpu = 40.0

    text = render_many_clients([run])

    assert "CPU during the pull: server 40.0 s, clients 90.5 s, in 80.0 s" in text
    assert "CPU during the push: server 35.2 s, clients 60.0 s, in 62.5 s" in text
    assert "push phase: 70.0 s, until the last client exited" in text
    assert "the server's CPU in it: 40.0 s" in text
    assert "30.0 s        70.0 s      40.0 s" in text.splitlines()[-1]


def test_push_phase__a_job_ending_after_the_last_client__ends_it():
    spans = [
        ("dequeuing", "a", 105.0, 106.0),
        ("cleanup", "a", 140.0, 152.5),
    ]

    assert push_phase_seconds(100.0, 150.0, spans) == 52.5


def test_push_phase__jobs_of_the_pull_and_unfinished_jobs__left_out():
    spans = [
        ("serializing", "pull", 20.0, 160.0),
        ("cleanup", "a", 140.0, None),
    ]

    assert push_phase_seconds(100.0, 150.0, spans) == 50.0


def test_render__push_phase_and_signing__in_the_report_and_the_summary():
    run = _clean_run()
    run.push_phase = 41.25
    run.signing = "pure-Python rsa"
    run.client_niceness = 10

    text = render_many_clients([run])

    assert "RSA signing: pure-Python rsa; clients' niceness: 10" in text
    assert "push phase: 41.2 s, until the last client exited" in text
    assert "30.0 s        41.2 s" in text.splitlines()[-1]


def test_render__sqlite_run_without_the_lock_probe__says_so():
    run = _clean_run()
    run.lock_probe = False

    text = render_many_clients([run])

    assert "clients' niceness: 0; no write-lock probe" in text


def test_render__sqlite_run_with_the_lock_probe__says_nothing_of_it():
    run = _clean_run()
    run.lock_probe = True

    assert "write-lock probe" not in render_many_clients([run])


def _timed_run(mode, clients, slowest_push, push_phase, longest):
    run = _clean_run(clients)
    run.mode = mode
    run.pushes = [_sync(duration=slowest_push / 2), _sync(duration=slowest_push)]
    run.push_phase = push_phase
    run.push_exchanges = [_exchange("DELETE", "/api/morango/v1/x/", longest)]
    return run


def test_chart_figures__each_count_with_the_plugin_on_beside_off():
    runs = [
        _timed_run("on", 8, 14.0, 16.5, 0.7),
        _timed_run("off", 8, 16.0, 16.0, 4.2),
        _timed_run("on", 32, 60.0, 80.0, 1.6),
    ]

    labels, figures = many_clients_chart_figures(runs)

    assert labels == ["8", "32"]
    assert figures["Slowest push (s)"] == {"on": [14.0, 60.0], "off": [16.0, None]}
    assert figures["Push phase (s)"] == {"on": [16.5, 80.0], "off": [16.0, None]}
    assert figures["Longest request (s, log scale)"]["off"] == [4.2, None]


def test_chart_figures__several_databases__named_under_the_count():
    runs = [
        _timed_run("on", 8, 14.0, 16.5, 0.7),
        _timed_run("on", 8, 20.0, 22.0, 0.9),
    ]
    runs[1].database = "postgresql"

    labels, figures = many_clients_chart_figures(runs)

    assert labels == ["8\nsqlite", "8\npostgresql"]
    assert figures["Slowest push (s)"]["on"] == [14.0, 20.0]


def test_chart__written_as_a_picture(tmp_path):
    runs = [_timed_run("on", 8, 14.0, 16.5, 0.7), _timed_run("off", 8, 16.0, 16.0, 4.2)]

    path = write_many_clients_chart(runs, str(tmp_path / "many-clients.png"))

    with open(path, "rb") as picture:
        assert picture.read(8) == b"\x89PNG\r\n\x1a\n"
