"""
How the lab's report works out stage timings from proxy exchanges and stage jobs.
"""

import datetime

from sync_lab.bench.report import BACKGROUND
from sync_lab.bench.report import REQUEST
from sync_lab.bench.report import ModeRun
from sync_lab.bench.report import bench_figures
from sync_lab.bench.report import render_bench_processes
from sync_lab.bench.report import stage_timings
from sync_lab.bench.report import transfer_time
from sync_lab.harness.proxy import Exchange
from sync_lab.harness.uwsgi_server import AccessLogEntry
from sync_lab.harness.uwsgi_server import ProcessPeak
from sync_lab.harness.uwsgi_server import Recycling

SESSION = "abc"


def _exchange(
    started, duration, method, requested=None, stage=None, status=None, push=False
):
    exchange = Exchange(method, "/api/morango/v1/transfersessions/abc/", started)
    exchange.duration = duration
    exchange.status = 200
    exchange.transfer_session_id = SESSION
    exchange.requested_stage = requested
    exchange.stage = stage
    exchange.stage_status = status
    exchange.push = push
    return exchange


def _job(stage, duration):
    started = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    finished = started + datetime.timedelta(seconds=duration)
    return {
        "transfer_session_id": SESSION,
        "stage": stage,
        "direction": "pull",
        "job_state": "COMPLETED",
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
    }


def _only(timings, stage):
    (timing,) = [t for t in timings if t.stage == stage]
    return timing


def test_stage_timings__stage_without_job_ran_in_request():
    exchanges = [
        _exchange(100.0, 2.0, "PATCH", "serializing", "serializing", "completed")
    ]
    timing = _only(stage_timings(exchanges, []), "serializing")
    assert (timing.ran_in, timing.stage_time, timing.waited) == (REQUEST, 2.0, 2.0)


def test_stage_timings__stage_with_job_ran_in_background():
    exchanges = [
        _exchange(100.0, 0.1, "PATCH", "serializing", "serializing", "started"),
        _exchange(101.0, 0.1, "GET", None, "serializing", "started"),
        _exchange(102.0, 0.1, "GET", None, "serializing", "completed"),
    ]
    timing = _only(stage_timings(exchanges, [_job("serializing", 1.5)]), "serializing")
    assert (timing.ran_in, timing.stage_time, timing.longest_request) == (
        BACKGROUND,
        1.5,
        0.1,
    )


def test_stage_timings__client_wait_ends_at_first_answer_showing_stage_done():
    exchanges = [
        _exchange(100.0, 0.1, "PATCH", "queuing", "queuing", "started"),
        _exchange(101.0, 0.1, "GET", None, "queuing", "started"),
        _exchange(103.0, 0.5, "GET", None, "queuing", "completed"),
        _exchange(105.0, 0.1, "GET", None, "queuing", "completed"),
    ]
    timing = _only(stage_timings(exchanges, [_job("queuing", 1.0)]), "queuing")
    assert round(timing.waited, 6) == 3.5


def test_stage_timings__later_stage_in_answer_means_stage_done():
    exchanges = [
        _exchange(100.0, 0.1, "PATCH", "dequeuing", "dequeuing", "started"),
        _exchange(102.0, 0.2, "GET", None, "deserializing", "pending"),
    ]
    timing = _only(stage_timings(exchanges, []), "dequeuing")
    assert round(timing.waited, 6) == 2.2


def test_stage_timings__direction_from_push_flag():
    exchanges = [_exchange(100.0, 0.1, "POST", "initializing", push=True)]
    (timing,) = stage_timings(exchanges, [])
    assert timing.direction == "push"


def test_transfer_time__spans_first_to_last_exchange_of_direction():
    exchanges = [
        _exchange(100.0, 0.5, "POST", "initializing"),
        _exchange(104.0, 1.0, "DELETE", "cleanup"),
    ]
    assert transfer_time(exchanges, "pull") == 5.0
    assert transfer_time(exchanges, "push") is None


class _Outcome:
    ok = True
    counts_match = True
    jobs = []


def _run(pull_seconds, push_seconds, longest):
    """A round trip whose transfers took these times, its longest request ``longest``."""
    exchanges = [
        _exchange(0.0, longest, "GET"),
        _exchange(pull_seconds - 0.05, 0.05, "GET"),
    ]
    for started, duration in ((100.0, 0.05), (100.0 + push_seconds - 0.05, 0.05)):
        push = _exchange(started, duration, "GET", push=True)
        push.transfer_session_id = "def"
        exchanges.append(push)
    return ModeRun("on", "", _Outcome(), exchanges)


def test_bench_figures__times_are_medians_and_longest_is_the_worst_run():
    runs = [_run(1.0, 2.0, 0.1), _run(3.0, 1.0, 0.4), _run(2.0, 5.0, 0.2)]

    figures = bench_figures(runs)

    assert (round(figures["pull"], 6), round(figures["push"], 6)) == (2.0, 2.0)
    # the median of 3.0, 4.0 and 7.0
    assert round(figures["round_trip"], 6) == 4.0
    assert figures["longest"] == 0.4
    assert (figures["runs"], figures["ok"]) == (3, True)


def test_bench_figures__counts_requests_answered_5xx_or_not_at_all():
    run = _run(1.0, 2.0, 0.1)
    run.exchanges[0].status = 504
    run.exchanges[1].status = None

    assert bench_figures([run, _run(1.0, 2.0, 0.1)])["failed"] == 2


def test_render_bench_processes__each_process_and_what_uwsgi_replaced():
    on = _run(1.0, 2.0, 0.1)
    on.process_peaks = [
        ProcessPeak("services", 10, 200 * 1024),
        ProcessPeak("uwsgi master", 11, 90 * 1024),
        ProcessPeak("uwsgi worker", 13, 120 * 1024),
        ProcessPeak("uwsgi worker", 12, 530 * 1024),
    ]
    on.recycling = Recycling(
        [("uwsgi worker", 12)],
        [("uwsgi worker", 14)],
        ["Respawned uWSGI worker 1 (new pid: 14)"],
    )
    on.access_log = [AccessLogEntry("PATCH", "/x", 504, 60.001, 60.0, 300)]
    off = _run(1.0, 2.0, 0.1)

    table = render_bench_processes([(12000, {"on": [on], "off": [off]})])

    [row] = table.splitlines()[1:]
    assert row.split()[:6] == ["12000", "on", "200", "90", "530,", "120"]
    assert "uwsgi worker 530" in row and "60.001s" in row
    assert "gone uwsgi worker 12; new uwsgi worker 14" in row
    assert render_bench_processes([(12000, {"on": [off], "off": [off]})]) == ""
