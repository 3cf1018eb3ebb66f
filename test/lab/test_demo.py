"""
The demo's ``--compare`` path, end to end at a small size: both modes, the timing
proxy with a timeout, the report and the chart. It starts real Kolibri instances,
as the demo does, so that the demo cannot quietly stop working.
"""

import io

import pytest

from sync_lab.bench import demo
from sync_lab.bench.report import BACKGROUND
from sync_lab.bench.report import REQUEST
from sync_lab.harness import instances

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    args = demo.parse_args(
        [
            "--compare",
            "--records",
            "60",
            "--client-records",
            "30",
            "--proxy-timeout",
            "120",
            # every configured stage in a job, however small
            "--set",
            "INLINE_STAGE_RECORDS=0",
            "--workdir",
            str(root / "homes"),
            "--output",
            str(root / "output"),
        ]
    )
    progress = demo.Progress(stream=io.StringIO())
    runs = {run.mode: run for run in demo.run(args, progress=progress)}
    return root, runs, progress.stream.getvalue()


def _ran_in(run):
    return {(t.direction, t.stage): t.ran_in for t in run.timings}


def test_demo__both_modes_make_a_clean_round_trip(compared):
    _, runs, log = compared
    assert sorted(runs) == ["off", "on"]
    for run in runs.values():
        assert run.outcome.ok and run.outcome.counts_match, log


def test_demo__plugin_on_runs_configured_stages_in_jobs(compared):
    _, runs, _ = compared
    ran_in = _ran_in(runs["on"])
    background = {key for key, where in ran_in.items() if where == BACKGROUND}
    assert background == demo.background_stages(demo.MODES["on"])


def test_demo__plugin_off_runs_every_stage_in_requests(compared):
    _, runs, _ = compared
    assert set(_ran_in(runs["off"]).values()) == {REQUEST}


def test_demo__proxy_timed_every_request(compared):
    _, runs, _ = compared
    for run in runs.values():
        assert run.exchanges and not run.timeouts
        assert all(e.duration is not None for e in run.exchanges)


def test_demo__writes_report_and_chart(compared):
    root, _, _ = compared
    report = (root / "output" / "report.txt").read_text()
    assert "== comparison, same data" in report
    assert (root / "output" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo__shows_progress(compared):
    _, _, log = compared
    assert "pull serializing" in log and "push deserializing" in log


def test_demo__leaves_no_home_or_server_behind(compared):
    root, _, _ = compared
    assert list((root / "homes").iterdir()) == []
    assert instances.running_instances() == []


def test_background_stages__follow_plugin_defaults():
    assert demo.background_stages(demo.MODES["on"]) == {
        ("pull", "serializing"),
        ("pull", "queuing"),
        ("push", "dequeuing"),
        ("push", "deserializing"),
        ("push", "cleanup"),
    }


def test_background_stages__none_without_plugin():
    assert demo.background_stages(demo.MODES["off"]) == set()
