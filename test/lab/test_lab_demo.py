"""
The demo's options and progress lines, without starting Kolibri (the whole demo
runs in ``test_demo.py``).
"""

import io

import pytest

from sync_lab.bench import demo
from sync_lab.harness.dataset import RECORDS_PER_LEARNER
from sync_lab.harness.proxy import Exchange


def test_parse_args__users_give_records():
    args = demo.parse_args(["--users", "10"])
    assert args.records == 10 * RECORDS_PER_LEARNER


def test_parse_args__client_records_default_to_server_records():
    args = demo.parse_args(["--records", "500"])
    assert args.client_records == 500


def test_parse_args__sizes_are_a_comma_list():
    args = demo.parse_args(["--bench", "--sizes", "100, 200"])
    assert args.sizes == [100, 200]


def test_parse_args__sizes_must_be_numbers():
    with pytest.raises(SystemExit):
        demo.parse_args(["--bench", "--sizes", "2k"])


def test_parse_args__bench_defaults__tiny_size_first_and_kolibris_chunk_size():
    args = demo.parse_args(["--bench"])
    assert args.sizes[0] <= demo.TINY_RECORDS < args.sizes[1]
    # no --chunk-size is given to the client: Kolibri's own default (200) applies
    assert args.chunk_size is None


def test_bench_repeats__tiny_size_runs_several_times_large_once():
    args = demo.parse_args(["--bench"])
    assert demo.bench_repeats(10, args) == demo.DEFAULT_TINY_REPEATS == 3
    assert demo.bench_repeats(2000, args) == 1


def test_parse_args__chunk_size_must_be_positive():
    with pytest.raises(SystemExit):
        demo.parse_args(["--bench", "--chunk-size", "0"])


def test_parse_args__churn_needs_clients_and_a_positive_rate():
    assert demo.parse_args(["--clients", "4", "--churn", "150"]).churn == 150.0
    assert demo.parse_args(["--clients", "4"]).churn is None
    for argv in (["--churn", "150"], ["--clients", "4", "--churn", "0"]):
        with pytest.raises(SystemExit):
            demo.parse_args(argv)


def test_parse_args__client_niceness_needs_clients_and_nice_s_range():
    assert (
        demo.parse_args(["--clients", "4", "--client-niceness", "10"]).client_niceness
        == 10
    )
    assert demo.parse_args(["--clients", "4"]).client_niceness == 0
    for argv in (
        ["--client-niceness", "10"],
        ["--clients", "4", "--client-niceness", "20"],
        ["--clients", "4", "--client-niceness", "-1"],
    ):
        with pytest.raises(SystemExit):
            demo.parse_args(argv)


def test_certain_jobs__plugin_on_with_small_stages_inline__waits_for_cleanup_only():
    # every other stage may run in the request when small; cleanup never does
    assert demo.certain_jobs(demo.MODES["on"]) == {("push", "cleanup")}
    assert len(demo.background_stages(demo.MODES["on"])) == 5


def test_certain_jobs__cleanup_is_the_one_stage_the_fast_path_never_weighs():
    from kolibri_sync_extras_plugin.request.inline import (
        RECORDS_PER_DESERIALIZED_RECORD,
    )

    assert set(RECORDS_PER_DESERIALIZED_RECORD) == {
        "serializing",
        "queuing",
        "dequeuing",
        "deserializing",
    }


def test_certain_jobs__nothing_inline__waits_for_every_background_stage():
    args = demo.parse_args(["--compare", "--set", "INLINE_STAGE_RECORDS=0"])
    mode = demo.modes_for(args)["on"]
    assert demo.certain_jobs(mode) == demo.background_stages(mode)


def test_modes_for__set_options_reach_the_plugin_on_server_only():
    args = demo.parse_args(["--compare", "--set", "pull_page_size=0"])
    modes = demo.modes_for(args)
    assert modes["on"].sync_options["PULL_PAGE_SIZE"] == "0"
    assert "PULL_PAGE_SIZE" not in modes["off"].sync_options
    assert "PULL_PAGE_SIZE" not in demo.MODES["on"].sync_options


def test_parse_args__set_needs_name_and_value():
    with pytest.raises(SystemExit):
        demo.parse_args(["--set", "PULL_PAGE_SIZE"])


def test_parse_args__compare_and_mode_exclude_each_other():
    with pytest.raises(SystemExit):
        demo.parse_args(["--compare", "--mode", "off"])


def _answer(stage, status, transferred=None, total=None):
    exchange = Exchange("GET", "/api/morango/v1/transfersessions/abc/", 0.0)
    exchange.duration = 0.01
    exchange.transfer_session_id = "abc"
    exchange.push = False
    exchange.stage = stage
    exchange.stage_status = status
    exchange.records_transferred = transferred
    exchange.records_total = total
    return exchange


def _lines(*exchanges):
    progress = demo.Progress(stream=io.StringIO())
    for exchange in exchanges:
        progress.exchange(exchange)
    return progress.stream.getvalue().splitlines()


def test_progress__says_each_stage_status_once():
    lines = _lines(
        _answer("serializing", "started"),
        _answer("serializing", "started"),
        _answer("serializing", "completed"),
    )
    assert len(lines) == 2
    assert "pull serializing" in lines[0] and "started" in lines[0]


def test_progress__says_transfer_counts():
    (line,) = _lines(_answer("transferring", "pending", 200, 600))
    assert "200/600 records" in line


def test_progress__says_proxy_timeouts():
    exchange = _answer("queuing", "started")
    exchange.status, exchange.error = 504, "no answer from the server within 5s"
    assert "504" in _lines(exchange)[0]


def test_parse_args__server_defaults_to_kolibri_start():
    assert demo.parse_args([]).server == "start"


def test_parse_args__server_chooses_how_the_server_runs(monkeypatch):
    monkeypatch.setattr(demo, "missing_for", lambda server: [])
    for server in ("start", "split", "uwsgi"):
        assert demo.parse_args(["--bench", "--server", server]).server == server
    with pytest.raises(SystemExit):
        demo.parse_args(["--server", "gunicorn"])


def test_parse_args__server_uwsgi_refused_when_a_program_is_missing(monkeypatch):
    monkeypatch.setattr(demo, "missing_for", lambda server: ["nginx is not installed"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--server", "uwsgi"])


def test_parse_args__lock_probe_on_unless_left_out_and_only_with_clients():
    assert demo.parse_args(["--clients", "4"]).lock_probe is True
    assert demo.parse_args(["--clients", "4", "--no-lock-probe"]).lock_probe is False
    with pytest.raises(SystemExit):
        demo.parse_args(["--no-lock-probe"])
