"""
What a lab run measured, worked out from the proxy's exchanges and the server's
stage jobs, and written as text tables and a PNG chart.

A stage "ran in the request" when no background job served it: the request that
asked for it did the work. For each stage the report gives how many requests the
client made for it, the longest of them, the stage's own time (the job's run time,
or the time spent in the requests that did the work) and how long the client
waited from asking for the stage to seeing it done.
"""

import datetime
import logging
import statistics
from collections import OrderedDict

import kolibri  # noqa: F401  # puts Kolibri's vendored morango on sys.path
from morango.constants import transfer_stages
from morango.constants import transfer_statuses

from ..harness.dataset import COUNTED
from ..harness.topology import DEFAULT_SERVER
from ..harness.topology import SERVERS
from ..harness.topology import peak_rss_line
from ..harness.topology import process_peaks_line
from ..harness.topology import recycling_line

__all__ = [
    "StageTiming",
    "ModeRun",
    "stage_timings",
    "transfer_time",
    "pull_pages",
    "render_run",
    "render_comparison",
    "bench_figures",
    "render_bench",
    "render_bench_processes",
    "write_comparison_chart",
    "write_bench_chart",
    "chart_pyplot",
]

BACKGROUND = "background job"
REQUEST = "request"


def _direction(push):
    if push is None:
        return None
    return "push" if push else "pull"


def _seconds(value, digits=2):
    if value is None:
        return "-"
    return "{:.{}f}s".format(value, digits)


def _ratio(on, off):
    if on is None or off is None or off == 0:
        return "-"
    return "{:.2f}".format(on / off)


def job_run_time(job):
    """
    :param job: A stage job, see :func:`sync_lab.harness.jobs.stage_jobs`
    :return: How long the stage ran in the job, if the job says
    :rtype: float|None
    """
    if not (job.get("started_at") and job.get("finished_at")):
        return None
    started, finished = (
        datetime.datetime.fromisoformat(job[key])
        for key in ("started_at", "finished_at")
    )
    return (finished - started).total_seconds()


class StageTiming:
    """How one server stage of one transfer session went, seen from both ends."""

    def __init__(self, direction, stage, transfer_session_id, requests, job, waited):
        self.direction = direction
        self.stage = stage
        self.transfer_session_id = transfer_session_id
        #: The exchanges that asked the server for this stage
        self.requests = requests
        #: The plugin's job for the stage, as :func:`sync_lab.harness.jobs.stage_jobs`
        #: lists it
        self.job = job
        #: Seconds from the client asking for the stage to seeing it done
        self.waited = waited

    @property
    def ran_in(self):
        """:rtype: str"""
        return BACKGROUND if self.job else REQUEST

    @property
    def request_time(self):
        """Seconds spent in this stage's requests. :rtype: float"""
        return sum(exchange.duration for exchange in self.requests)

    @property
    def longest_request(self):
        """:rtype: float|None"""
        return max((e.duration for e in self.requests), default=None)

    @property
    def job_time(self):
        """
        The job's own run time, as the plugin's task reports it in its result.

        :rtype: float|None
        """
        return job_run_time(self.job) if self.job else None

    @property
    def stage_time(self):
        """:rtype: float|None"""
        return self.job_time if self.job else self.request_time


def _client_wait(session, stage, requests):
    """
    Seconds from the first request for ``stage`` to the first answer that shows it
    completed (or the transfer session past it); for requests whose answer says
    nothing of the stage (a ``DELETE``), until the last of them ended.
    """
    if not requests:
        return None
    begun = requests[0].started
    rank = transfer_stages.precedence(stage)
    for exchange in sorted(session, key=lambda e: e.ended):
        if exchange.started < begun or exchange.stage is None:
            continue
        exchange_rank = transfer_stages.precedence(exchange.stage) or 0
        if exchange_rank > rank or (
            exchange.stage == stage
            and exchange.stage_status == transfer_statuses.COMPLETED
        ):
            return exchange.ended - begun
    return max(e.ended for e in requests) - begun


def stage_timings(exchanges, jobs):
    """
    :param exchanges: The proxy's :class:`~sync_lab.harness.proxy.Exchange` list
    :param jobs: The server's stage jobs, see :func:`sync_lab.harness.jobs.stage_jobs`
    :return: One timing per stage of each transfer session, in the order the
        transfer sessions started and the stages run
    :rtype: list
    """
    sessions = OrderedDict()
    for exchange in sorted(exchanges, key=lambda e: e.started):
        if exchange.transfer_session_id:
            sessions.setdefault(exchange.transfer_session_id, []).append(exchange)
    jobs_by_stage = {(job["transfer_session_id"], job["stage"]): job for job in jobs}
    timings = []
    for session_id, session in sessions.items():
        direction = next(
            (_direction(e.push) for e in session if e.push is not None), None
        )
        stages = {e.requested_stage for e in session if e.requested_stage}
        stages.update(stage for (sid, stage) in jobs_by_stage if sid == session_id)
        for stage in sorted(stages, key=lambda s: transfer_stages.precedence(s) or 0):
            requests = [e for e in session if e.requested_stage == stage]
            timings.append(
                StageTiming(
                    direction,
                    stage,
                    session_id,
                    requests,
                    jobs_by_stage.get((session_id, stage)),
                    _client_wait(session, stage, requests),
                )
            )
    return timings


def transfer_time(exchanges, direction):
    """
    Seconds from the first to the last exchange of the ``direction``'s transfer
    sessions: the sync without the client's start-up, login and certificate work,
    which the plugin does not change.

    :rtype: float|None
    """
    sessions = {
        e.transfer_session_id
        for e in exchanges
        if e.transfer_session_id and _direction(e.push) == direction
    }
    chosen = [e for e in exchanges if e.transfer_session_id in sessions]
    if not chosen:
        return None
    return max(e.ended for e in chosen) - min(e.started for e in chosen)


def pull_pages(exchanges):
    """
    :return: The client's requests for a page of pulled records
    :rtype: list
    """
    return [
        e
        for e in exchanges
        if e.method == "GET" and e.path.split("?")[0].endswith("/buffers/")
    ]


class ModeRun:
    """One mode's round trip, through the proxy, and what it measured."""

    def __init__(
        self,
        mode,
        description,
        outcome,
        exchanges,
        proxy_timeout=None,
        server=None,
        process_peaks=None,
        recycling=None,
        access_log=None,
    ):
        """
        :param mode: The mode's short name, e.g. ``"on"``
        :param description: What the mode runs, for the report
        :type outcome: sync_lab.harness.scenario.RoundTrip
        :param exchanges: The proxy's exchanges during the round trip
        :param server: How the server ran, a name in
            :data:`sync_lab.harness.topology.SERVERS`
        :param process_peaks: The server's processes' peak memory, as
            :meth:`~sync_lab.harness.uwsgi_server.UwsgiKolibriInstance.process_peaks`
            gives it, when the server could tell
        :param recycling: The processes uwsgi replaced during the round trip, a
            :class:`~sync_lab.harness.uwsgi_server.Recycling`, when the server
            could tell
        :param access_log: nginx's requests, as
            :meth:`~sync_lab.harness.uwsgi_server.UwsgiKolibriInstance.access_log`
            gives them, when nginx served them
        """
        self.mode = mode
        self.description = description
        self.outcome = outcome
        self.exchanges = list(exchanges)
        self.proxy_timeout = proxy_timeout
        self.server = server
        self.process_peaks = process_peaks
        self.recycling = recycling
        self.access_log = access_log
        self.timings = stage_timings(self.exchanges, outcome.jobs)

    @property
    def longest(self):
        """The exchange the client waited longest for. :rtype: Exchange|None"""
        return max(self.exchanges, key=lambda e: e.duration, default=None)

    @property
    def longest_seconds(self):
        """:rtype: float|None"""
        return self.longest.duration if self.longest else None

    @property
    def timeouts(self):
        """Exchanges the proxy answered with 504 itself. :rtype: list"""
        return [e for e in self.exchanges if e.status == 504 and e.error]

    @property
    def failed(self):
        """
        Exchanges answered 5xx (by the server, nginx or the proxy) or not at all.

        :rtype: list
        """
        return [e for e in self.exchanges if e.status is None or e.status >= 500]

    @property
    def nginx_longest(self):
        """The longest request in nginx's access log. :rtype: AccessLogEntry|None"""
        return max(
            self.access_log or (), key=lambda entry: entry.request_time, default=None
        )

    def transfer_time(self, direction):
        """:rtype: float|None"""
        return transfer_time(self.exchanges, direction)

    @property
    def total_transfer_time(self):
        """:rtype: float|None"""
        times = [self.transfer_time("pull"), self.transfer_time("push")]
        if None in times:
            return None
        return sum(times)

    @property
    def command_time(self):
        """Wall time of the client's two ``sync`` commands. :rtype: float"""
        return sum(
            sync.duration for sync in (self.outcome.pull, self.outcome.push) if sync
        )


def _table(rows, header):
    widths = [
        max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))
    ]
    lines = []
    for row in [header] + rows:
        lines.append(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths))
        )
    return lines


def _sync_line(name, sync):
    if sync is None:
        return "{}: not run".format(name)
    return "{}: exit {} after {}".format(
        name, sync.returncode, _seconds(sync.duration, 1)
    )


def render_run(run):
    """
    :type run: ModeRun
    :rtype: str
    """
    outcome = run.outcome
    lines = ["== {}: {}".format(run.mode, run.description)]
    if run.server and run.server != DEFAULT_SERVER:
        lines.append("server: {}".format(SERVERS[run.server][1]))
    if run.process_peaks:
        lines.append("peak RSS: {}".format(peak_rss_line(run.process_peaks)))
        lines.append(
            "peak RSS by process: {}".format(
                process_peaks_line(
                    run.process_peaks, run.recycling.gone if run.recycling else ()
                )
            )
        )
    if run.recycling is not None:
        lines.append(
            "uwsgi replaced a process during the round trip: {}".format(
                recycling_line(run.recycling)
            )
        )
    created = outcome.facility.get("created") or {}
    lines.append(
        "records generated: server {}, client {}".format(
            created.get("total", "-"),
            (outcome.client_created or {}).get("total", "-"),
        )
    )
    lines.append(
        "{} (transfer {}); {} (transfer {})".format(
            _sync_line("pull", outcome.pull),
            _seconds(run.transfer_time("pull")),
            _sync_line("push", outcome.push),
            _seconds(run.transfer_time("push")),
        )
    )
    longest = run.longest
    if longest is not None:
        lines.append(
            "longest request: {} {} -> {} in {}".format(
                longest.method,
                longest.path.split("?")[0],
                longest.status,
                _seconds(longest.duration, 3),
            )
        )
    pages = pull_pages(run.exchanges)
    if pages:
        lines.append(
            "pull pages: {}, the longest answered in {}, the largest {:.0f} KB "
            "on the wire".format(
                len(pages),
                _seconds(max(e.duration or 0 for e in pages), 3),
                max(e.response_bytes for e in pages) / 1024.0,
            )
        )
    lines.append(
        "requests through the proxy: {}; answered 504 by the proxy: {}{}; "
        "answered 5xx or not at all: {}".format(
            len(run.exchanges),
            len(run.timeouts),
            " (timeout {}s)".format(run.proxy_timeout) if run.proxy_timeout else "",
            len(run.failed),
        )
    )
    if run.access_log is not None:
        nginx_longest = run.nginx_longest
        lines.append(
            "nginx's access log: {} requests, 5xx: {}; the longest {}".format(
                len(run.access_log),
                sum(1 for entry in run.access_log if entry.status >= 500),
                "{} {} -> {} in {}".format(
                    nginx_longest.method,
                    nginx_longest.path.split("?")[0],
                    nginx_longest.status,
                    _seconds(nginx_longest.request_time, 3),
                )
                if nginx_longest
                else "-",
            )
        )
    lines.append("")
    lines.extend(
        _table(
            [
                [
                    t.direction or "?",
                    t.stage,
                    t.ran_in,
                    len(t.requests),
                    _seconds(t.longest_request, 3),
                    _seconds(t.stage_time, 3),
                    _seconds(t.waited, 3),
                ]
                for t in run.timings
            ],
            [
                "dir",
                "stage",
                "ran in",
                "requests",
                "longest",
                "stage time",
                "client waited",
            ],
        )
    )
    lines.append("")
    server = outcome.counts.get("server", {})
    client = outcome.counts.get("client", {})
    lines.extend(
        _table(
            [
                [
                    kind,
                    server.get(kind, "-"),
                    client.get(kind, "-"),
                    "yes" if server.get(kind) == client.get(kind) else "NO",
                ]
                for kind in COUNTED
            ],
            ["records", "server", "client", "equal"],
        )
    )
    lines.append("all counts match: {}".format("yes" if outcome.counts_match else "NO"))
    lines.append("")
    if outcome.jobs:
        lines.append("server stage jobs:")
        lines.extend(
            "  " + line
            for line in _table(
                [
                    [
                        job["direction"],
                        job["stage"],
                        job["job_state"],
                        _seconds(job_run_time(job), 3),
                        job["job_id"][:12],
                    ]
                    for job in outcome.jobs
                ],
                ["dir", "stage", "state", "ran for", "job"],
            )
        )
    else:
        lines.append("server stage jobs: none")
    return "\n".join(lines)


def render_comparison(runs):
    """
    The same round trip in several modes, side by side, with the ratio of the
    first mode to the second.

    :type runs: list[ModeRun]
    :rtype: str
    """
    header = ["measure"] + [run.mode for run in runs]
    if len(runs) == 2:
        header.append("{}/{}".format(runs[0].mode, runs[1].mode))

    def row(name, values, digits=2):
        cells = [name] + [_seconds(v, digits) for v in values]
        if len(runs) == 2:
            cells.append(_ratio(*values))
        return cells

    rows = [
        row("longest request", [r.longest_seconds for r in runs], 3),
        row("pull transfer", [r.transfer_time("pull") for r in runs]),
        row("push transfer", [r.transfer_time("push") for r in runs]),
        row("total transfer", [r.total_transfer_time for r in runs]),
        row("sync commands", [r.command_time for r in runs]),
    ]
    rows.append(
        ["requests"]
        + [str(len(r.exchanges)) for r in runs]
        + ([""] if len(runs) == 2 else [])
    )
    rows.append(
        ["proxy 504s"]
        + [str(len(r.timeouts)) for r in runs]
        + ([""] if len(runs) == 2 else [])
    )
    rows.append(
        ["syncs exit 0"]
        + ["yes" if r.outcome.ok else "NO" for r in runs]
        + ([""] if len(runs) == 2 else [])
    )
    rows.append(
        ["counts match"]
        + ["yes" if r.outcome.counts_match else "NO" for r in runs]
        + ([""] if len(runs) == 2 else [])
    )
    rows.append(
        ["stage jobs"]
        + [str(len(r.outcome.jobs)) for r in runs]
        + ([""] if len(runs) == 2 else [])
    )
    return "\n".join(_table(rows, header))


def _median(values):
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def bench_figures(runs):
    """
    One mode's figures at one size of a bench: the median of its runs for each
    time, and the longest request of all its runs.

    :param runs: The mode's :class:`ModeRun` at that size, one per repeat
    :return: ``pull``, ``push``, ``round_trip`` and ``longest`` in seconds (or
        ``None``), ``runs``, ``failed`` (requests answered 5xx or not at all, in
        all runs) and ``ok`` (every run synced and counted equal)
    :rtype: dict
    """
    return {
        "pull": _median(run.transfer_time("pull") for run in runs),
        "push": _median(run.transfer_time("push") for run in runs),
        "round_trip": _median(run.total_transfer_time for run in runs),
        "longest": max(
            (run.longest_seconds for run in runs if run.longest_seconds is not None),
            default=None,
        ),
        "runs": len(runs),
        "failed": sum(len(run.failed) for run in runs),
        "ok": bool(runs)
        and all(run.outcome.ok and run.outcome.counts_match for run in runs),
    }


def _mode_runs(runs):
    return runs if isinstance(runs, (list, tuple)) else [runs]


def render_bench(results):
    """
    Pull, push and round trip time, plugin on vs off, with ratios on/off, and the
    longest single request of each mode. Times are medians when a size ran several
    times; the longest request is the longest of all runs.

    :param results: ``(records, {mode: [ModeRun, ...]})`` pairs, modes ``on`` and
        ``off`` (a single ``ModeRun`` counts as one run)
    :rtype: str
    """
    header = [
        "records/dir",
        "runs",
        "pull on",
        "pull off",
        "ratio",
        "push on",
        "push off",
        "ratio",
        "round trip on",
        "round trip off",
        "ratio",
        "longest on",
        "longest off",
        "5xx on/off",
        "ok on/off",
    ]
    rows = []
    for records, runs in results:
        on = bench_figures(_mode_runs(runs["on"]))
        off = bench_figures(_mode_runs(runs["off"]))
        row = [records, on["runs"]]
        for measure in ("pull", "push", "round_trip"):
            row += [
                _seconds(on[measure]),
                _seconds(off[measure]),
                _ratio(on[measure], off[measure]),
            ]
        row += [
            _seconds(on["longest"], 3),
            _seconds(off["longest"], 3),
            "{}/{}".format(on["failed"], off["failed"]),
            "{}/{}".format(*("yes" if f["ok"] else "NO" for f in (on, off))),
        ]
        rows.append(row)
    return "\n".join(_table(rows, header))


def _megabytes(peaks):
    return (
        ", ".join("{:.0f}".format(peak.peak_rss_kb / 1024.0) for peak in peaks) or "-"
    )


def render_bench_processes(results):
    """
    Each server process's peak resident memory (MB) per size and mode run, the
    highest of them, the longest request in nginx's log and whether uwsgi
    replaced a process; empty if no run could tell its processes' memory.

    :param results: As for :func:`render_bench`
    :rtype: str
    """
    header = [
        "records/dir",
        "mode",
        "services",
        "uwsgi master",
        "uwsgi workers",
        "highest",
        "nginx longest",
        "uwsgi replaced a process",
    ]
    rows = []
    for records, runs in results:
        for mode, mode_runs in runs.items():
            mode_runs = _mode_runs(mode_runs)
            for number, run in enumerate(mode_runs, 1):
                if not run.process_peaks:
                    continue
                by_role = OrderedDict()
                for peak in sorted(run.process_peaks, key=lambda p: p.pid):
                    by_role.setdefault(peak.role, []).append(peak)
                highest = max(run.process_peaks, key=lambda p: p.peak_rss_kb)
                nginx_longest = run.nginx_longest
                rows.append(
                    [
                        records,
                        mode if len(mode_runs) == 1 else "{} #{}".format(mode, number),
                        _megabytes(by_role.get("services", [])),
                        _megabytes(by_role.get("uwsgi master", [])),
                        _megabytes(by_role.get("uwsgi worker", [])),
                        "{} {:.0f}".format(highest.role, highest.peak_rss_kb / 1024.0),
                        _seconds(nginx_longest.request_time, 3)
                        if nginx_longest
                        else "-",
                        recycling_line(run.recycling) if run.recycling else "-",
                    ]
                )
    if not rows:
        return ""
    return "\n".join(_table(rows, header))


def chart_pyplot():
    """
    :return: matplotlib's pyplot on a file-only backend, or ``None`` if matplotlib
        is not installed (it is a test requirement, not a runtime one)
    """
    try:
        import matplotlib
    except ImportError:
        return None
    # Kolibri's import sets the root logger to INFO; matplotlib's font cache notes
    # are not part of the report
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def write_comparison_chart(runs, path):
    """
    Bar charts of the longest request and the total transfer time per mode.

    :type runs: list[ModeRun]
    :return: The path written, or ``None`` without matplotlib
    """
    pyplot = chart_pyplot()
    if pyplot is None:
        return None
    figure, axes = pyplot.subplots(1, 2, figsize=(9, 4))
    modes = ["plugin " + run.mode for run in runs]
    colours = ["tab:green", "tab:gray", "tab:blue", "tab:orange"][: len(runs)]
    for axis, title, values in (
        (axes[0], "Longest single request (s)", [r.longest_seconds or 0 for r in runs]),
        (
            axes[1],
            "Total transfer time (s)",
            [r.total_transfer_time or 0 for r in runs],
        ),
    ):
        bars = axis.bar(modes, values, color=colours)
        axis.set_title(title)
        axis.bar_label(bars, fmt="%.2f")
        axis.set_ylim(0, max(values + [0.001]) * 1.2)
    figure.suptitle("Plugin on vs off, same data")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def write_bench_chart(results, path):
    """
    Pull, push and round trip times and the longest request per mode, at each
    size of the bench (sizes as categories, since they span three orders of
    magnitude).

    :param results: As for :func:`render_bench`
    :return: The path written, or ``None`` without matplotlib
    """
    pyplot = chart_pyplot()
    if pyplot is None:
        return None
    labels = [str(records) for records, _ in results]
    positions = list(range(len(labels)))
    width = 0.38
    figure, axes = pyplot.subplots(1, 4, figsize=(17, 4))
    panels = (
        ("pull", "Pull (s)"),
        ("push", "Push (s)"),
        ("round_trip", "Round trip (s)"),
        ("longest", "Longest single request (s)"),
    )
    for offset, (mode, colour) in ((-1, ("on", "tab:green")), (1, ("off", "tab:gray"))):
        figures = [bench_figures(_mode_runs(runs[mode])) for _, runs in results]
        for axis, (measure, _) in zip(axes, panels):
            axis.bar(
                [p + offset * width / 2 for p in positions],
                [f[measure] or 0 for f in figures],
                width,
                color=colour,
                label="plugin " + mode,
            )
    for axis, (_, title) in zip(axes, panels):
        axis.set_title(title)
        axis.set_xticks(positions)
        axis.set_xticklabels(labels)
        axis.set_xlabel("records per direction")
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
