"""
Watch the plugin at work in a real local sync, and measure it.

``python -m sync_lab.demo`` creates a server and a client Kolibri home, gives the
server a facility with generated learner activity, starts it with the plugin and
its job workers, and has a stock client pull the facility, record new activity and
push it back, through a timing proxy. It then reports, per direction and stage,
whether the stage ran in the request or in a background job and how long it took,
the longest single request the server served, record counts on both sides and the
server's jobs. Every process it started is stopped before it exits.

``--compare`` runs the same data with the plugin on and off, ``--bench`` does so at
several sizes, ``--clients K`` has K clients pull and push at the same time (see
:mod:`sync_lab.bench.many_clients`; ``--churn RATE`` has the server's own users write
meanwhile), and ``--proxy-timeout`` makes the proxy answer 504 as nginx would.
``--server`` chooses how the server runs: ``kolibri start`` (the default), split
into an HTTP process and ``kolibri services``, or as Debian's kolibri-server
runs it, nginx in front of uwsgi (see :mod:`sync_lab.harness.topology`).
``python -m sync_lab.demo --help`` lists the options.
"""

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections import namedtuple
from pathlib import Path

import kolibri  # noqa: F401  # puts Kolibri's vendored packages on sys.path
from morango.constants import transfer_stages

from ..harness.dataset import RECORDS_PER_LEARNER
from ..harness.proxy import TimingProxy
from ..harness.scenario import round_trip
from ..harness.templates import DATABASES
from ..harness.templates import Templates
from ..harness.topology import DEFAULT_SERVER
from ..harness.topology import SERVERS
from ..harness.topology import describe_processes
from ..harness.topology import missing_for
from ..harness.topology import peak_rss_line
from ..harness.topology import recycling_line
from ..harness.topology import start_server
from ..harness.uwsgi_server import UWSGI_SETTINGS
from .many_clients import render_many_clients
from .many_clients import run_many_clients
from .many_clients import write_many_clients_chart
from .report import ModeRun
from .report import render_bench
from .report import render_bench_processes
from .report import render_comparison
from .report import render_run
from .report import write_bench_chart
from .report import write_comparison_chart

__all__ = ["MODES", "Mode", "background_stages", "main", "run"]

Mode = namedtuple("Mode", ("name", "description", "plugin", "sync_options"))

#: The server configurations the demo can run.
MODES = OrderedDict(
    (
        (
            "on",
            Mode(
                "on",
                "plugin enabled with its defaults, initialization and finalization "
                "in background jobs unless small",
                True,
                {"BACKGROUND_INITIALIZATION": True, "BACKGROUND_FINALIZATION": True},
            ),
        ),
        ("off", Mode("off", "stock Kolibri, plugin not enabled", False, {})),
    )
)

DEFAULT_RECORDS = 2000
#: A tiny sync (one learner each way, about 14 records), then large ones.
DEFAULT_BENCH_SIZES = (10, 2000, 6000, 12000)
#: Sizes up to this many records per direction are tiny: over in a few seconds,
#: so one run says little and the bench runs them several times.
TINY_RECORDS = 100
DEFAULT_TINY_REPEATS = 3
DEFAULT_OUTPUT = "demo-output"


def modes_for(args):
    """
    :return: :data:`MODES`, the plugin's ``[Sync]`` options of mode ``on`` updated
        with the ``--set`` options
    :rtype: OrderedDict
    """
    modes = OrderedDict(MODES)
    on = modes["on"]
    modes["on"] = on._replace(sync_options=dict(on.sync_options, **args.sync_options))
    return modes


def _sync_section(mode):
    from kolibri_sync_extras_plugin.options import option_spec

    section = {key: spec["default"] for key, spec in option_spec["Sync"].items()}
    section.update(mode.sync_options)
    return {"Sync": section}


def background_stages(mode):
    """
    The ``(direction, stage)`` pairs the mode's server may run in background jobs,
    by the plugin's own reading of its options.

    :type mode: Mode
    :rtype: set
    """
    if not mode.plugin:
        return set()
    from kolibri_sync_extras_plugin.config import get_background_settings

    settings = get_background_settings(_sync_section(mode))
    return {("pull", stage) for stage in settings.pull_stages} | {
        ("push", stage) for stage in settings.push_stages
    }


def certain_jobs(mode):
    """
    The ``(direction, stage)`` pairs the mode's server surely runs in jobs: all of
    :func:`background_stages` when no stage may run in the request for being
    small, else those that never do (cleanup). A round trip also waits until no
    job waits or runs.

    :type mode: Mode
    :rtype: set
    """
    if not mode.plugin:
        return set()
    from kolibri_sync_extras_plugin.config import get_inline_stage_records

    stages = background_stages(mode)
    if not get_inline_stage_records(_sync_section(mode)):
        return stages
    return {(direction, stage) for direction, stage in stages if stage == "cleanup"}


class Progress:
    """Prints what the demo is doing, and the stages the proxy sees go by."""

    def __init__(self, stream=None, quiet=False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.started = time.monotonic()
        # the proxy reports exchanges from its own threads
        self._lock = threading.RLock()
        self._seen = {}
        self._last_progress = {}

    def say(self, message):
        if self.quiet:
            return
        with self._lock:
            self.stream.write(
                "[{:7.1f}s] {}\n".format(time.monotonic() - self.started, message)
            )
            self.stream.flush()

    def exchange(self, exchange):
        """Report a stage change, transfer progress or proxy timeout."""
        if exchange.error:
            self.say(
                "  proxy: {} {} -> {} ({})".format(
                    exchange.method,
                    exchange.path.split("?")[0],
                    exchange.status,
                    exchange.error,
                )
            )
        with self._lock:
            line = self._stage_line(exchange)
        if line:
            self.say(line)

    def _stage_line(self, exchange):
        """
        :return: What to say about the stage in the server's answer: a new stage or
            status, or transfer progress every few seconds; ``None`` if nothing
        """
        if not exchange.transfer_session_id or exchange.stage is None:
            return None
        key = exchange.transfer_session_id
        state = (exchange.stage, exchange.stage_status)
        now = time.monotonic()
        repeated = state == self._seen.get(key)
        transferring = exchange.stage == transfer_stages.TRANSFERRING
        if repeated and not (
            transferring and now - self._last_progress.get(key, 0) >= 2
        ):
            return None
        self._seen[key] = state
        self._last_progress[key] = now
        line = "  {} {:<13} {:<9}".format(
            "push" if exchange.push else "pull", exchange.stage, exchange.stage_status
        )
        if transferring:
            return line + " {}/{} records".format(
                exchange.records_transferred, exchange.records_total
            )
        return line + " ({} answered in {:.3f}s)".format(
            exchange.method, exchange.duration
        )


def _templates(args, workdir, progress, records=None):
    """
    The template homes of a run: a server per database with about ``records``
    records (``--records`` by default), plugin not enabled, and a fresh client;
    each mode syncs copies of them, so every mode syncs the same data from scratch.

    :rtype: sync_lab.harness.templates.Templates
    """
    return Templates(
        workdir,
        args.records if records is None else records,
        seed=args.seed,
        progress=progress.say,
        keep=args.keep,
    )


def run_mode(mode, templates, client_records, args, progress, suffix=""):
    """
    One round trip with the server in ``mode``, through a timing proxy.

    :type mode: Mode
    :type templates: sync_lab.harness.templates.Templates
    :param suffix: Added to the homes' names, to tell repeats apart
    :rtype: ModeRun
    """
    progress.say("== plugin {}: {}".format(mode.name, mode.description))
    server_kind = getattr(args, "server", DEFAULT_SERVER)
    server, facility = templates.new_server(
        "sqlite",
        "server-" + mode.name + suffix,
        instance_class=SERVERS[server_kind][0],
        plugin=mode.plugin,
        sync_options=mode.sync_options,
        options=getattr(args, "kolibri_options", None),
    )
    client = templates.new_client("client-" + mode.name + suffix)
    peaks = recycling = access_log = None
    with server, client:
        progress.say(
            "{}: starting the server and its job workers ({})".format(
                server.name, SERVERS[server_kind][1]
            )
        )
        start_server(server)
        progress.say(
            "{}: listening on {} ({})".format(
                server.name, server.base_url, describe_processes(server)
            )
        )
        # each process's peak memory, sampled while the round trip runs, so a
        # uwsgi worker replaced meanwhile leaves its peak behind
        watch = server.watch_peaks() if hasattr(server, "watch_peaks") else None
        with watch or contextlib.nullcontext(), TimingProxy(
            server.base_url,
            upstream_timeout=args.proxy_timeout,
            on_exchange=progress.exchange,
        ) as proxy:
            progress.say("proxy: {} -> {}".format(proxy.url, server.base_url))
            outcome = round_trip(
                server,
                client,
                facility,
                client_records,
                base_url=proxy.url,
                expected_jobs=certain_jobs(mode),
                job_timeout=args.job_timeout,
                sync_timeout=args.sync_timeout,
                seed=args.seed + 1,
                progress=progress.say,
                chunk_size=args.chunk_size,
            )
            exchanges = proxy.exchanges
        if watch is not None:
            peaks = watch.peaks()
            recycling = watch.recycling()
            access_log = server.access_log()
            progress.say("{}: peak RSS: {}".format(server.name, peak_rss_line(peaks)))
            progress.say(
                "{}: uwsgi replaced a process: {}".format(
                    server.name, recycling_line(recycling)
                )
            )
        progress.say("{}: stopping the server".format(server.name))
    run = ModeRun(
        mode.name,
        mode.description,
        outcome,
        exchanges,
        proxy_timeout=args.proxy_timeout,
        server=server_kind,
        process_peaks=peaks,
        recycling=recycling,
        access_log=access_log,
    )
    if not outcome.ok:
        failed = outcome.push if outcome.pull.ok else outcome.pull
        progress.say("a sync failed; its last output:\n" + failed.tail(15))
    return run


def _succeeded(run):
    return run.outcome.ok and run.outcome.counts_match


def _write(path, text, progress):
    path.write_text(text + "\n")
    progress.say("wrote {}".format(path))


def run_single(args, workdir, output, progress):
    templates = _templates(args, workdir, progress)
    try:
        run = run_mode(
            modes_for(args)[args.mode], templates, args.client_records, args, progress
        )
    finally:
        templates.cleanup()
    text = render_run(run)
    print("\n" + text)
    _write(output / "report.txt", text, progress)
    return [run]


def run_compare(args, workdir, output, progress):
    templates = _templates(args, workdir, progress)
    try:
        runs = [
            run_mode(mode, templates, args.client_records, args, progress)
            for mode in modes_for(args).values()
        ]
    finally:
        templates.cleanup()
    text = "\n\n".join(
        [render_run(run) for run in runs]
        + ["== comparison, same data\n" + render_comparison(runs)]
    )
    print("\n" + text)
    _write(output / "report.txt", text, progress)
    chart = write_comparison_chart(runs, str(output / "comparison.png"))
    progress.say(
        "wrote {}".format(chart) if chart else "no chart: matplotlib is not installed"
    )
    return runs


def bench_repeats(size, args):
    """
    :return: How many round trips each mode runs at ``size``
    :rtype: int
    """
    return args.tiny_repeats if size <= TINY_RECORDS else 1


def run_bench(args, workdir, output, progress):
    results = []
    for size in args.sizes:
        repeats = bench_repeats(size, args)
        progress.say(
            "==== {} records per direction, {} run(s) per mode".format(size, repeats)
        )
        templates = _templates(args, workdir, progress, records=size)
        modes = modes_for(args)
        runs = OrderedDict((mode.name, []) for mode in modes.values())
        try:
            for repeat in range(repeats):
                # alternate which mode goes first, so neither always meets what
                # the machine is still doing after the previous run
                order = list(modes.values())
                if repeat % 2:
                    order.reverse()
                for mode in order:
                    runs[mode.name].append(
                        run_mode(
                            mode,
                            templates,
                            size,
                            args,
                            progress,
                            suffix="-{}".format(repeat + 1) if repeats > 1 else "",
                        )
                    )
        finally:
            templates.cleanup()
        results.append((size, runs))
        progress.say("bench so far:\n" + render_bench(results))
    chunk = args.chunk_size or "Kolibri's default, 200"
    text = "\n\n".join(
        [
            render_run(run)
            for _, runs in results
            for mode_runs in runs.values()
            for run in mode_runs
        ]
        + [
            "== bench: plugin on vs off, ratios on/off, measured in this run\n"
            "server: {}; client chunk size: {}; times are from the client's first "
            "to its last transfer session request, medians when a size ran several "
            "times; longest is the longest request of all runs\n".format(
                SERVERS[args.server][1], chunk
            )
            + render_bench(results)
        ]
        + (
            [
                "== server processes: peak RSS (VmHWM, MB) sampled every 0.5 s "
                "during each round trip, and whether uwsgi replaced a process "
                "(reload-on-rss {} MB)\n".format(UWSGI_SETTINGS["reload-on-rss"])
                + render_bench_processes(results)
            ]
            if render_bench_processes(results)
            else []
        )
    )
    print("\n" + text)
    _write(output / "bench.txt", text, progress)
    chart = write_bench_chart(results, str(output / "bench.png"))
    progress.say(
        "wrote {}".format(chart) if chart else "no chart: matplotlib is not installed"
    )
    return [
        run for _, runs in results for mode_runs in runs.values() for run in mode_runs
    ]


def _sync_option(value):
    name, sep, setting = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(
            "give a [Sync] option as NAME=VALUE, e.g. PULL_PAGE_SIZE=0"
        )
    return name.strip().upper(), setting.strip()


def _kolibri_option(value):
    name, sep, setting = value.partition("=")
    section, dot, option = name.strip().partition(".")
    if not sep or not dot or not section or not option:
        raise argparse.ArgumentTypeError(
            "give an options.ini value as SECTION.OPTION=VALUE, e.g. "
            "Tasks.USE_WORKER_MULTIPROCESSING=true"
        )
    return section, option.upper(), setting.strip()


class _ManyClientsResult:
    """A many-clients run, as :func:`main` judges runs."""

    def __init__(self, run):
        self.run = run
        self.mode = "{} ({} clients, {})".format(run.mode, run.clients, run.database)

    @property
    def succeeded(self):
        return self.run.ok


def run_many(args, workdir, output, progress):
    """
    Every ``--clients`` count, on every ``--databases`` database, with the plugin
    on and off (or only ``--mode`` if given), from the same templates.
    """
    templates = _templates(args, workdir, progress)
    modes = [MODES[args.mode]] if args.mode_given else list(MODES.values())
    runs = []
    try:
        for clients in args.clients:
            for database in args.databases:
                for mode in modes:
                    runs.append(
                        run_many_clients(
                            mode,
                            database,
                            templates,
                            clients,
                            args.client_records,
                            args,
                            certain_jobs(mode),
                            progress.say,
                        )
                    )
                    progress.say("many clients so far:\n" + render_many_clients(runs))
    finally:
        templates.cleanup()
    text = render_many_clients(runs)
    print("\n" + text)
    _write(output / "many-clients.txt", text, progress)
    chart = write_many_clients_chart(runs, str(output / "many-clients.png"))
    progress.say(
        "wrote {}".format(chart) if chart else "no chart: matplotlib is not installed"
    )
    return [_ManyClientsResult(run) for run in runs]


def _counts(value):
    try:
        counts = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give whole numbers, e.g. 4,8")
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("give one or more numbers above 0")
    return counts


def _databases(value):
    names = [item.strip().lower() for item in value.split(",") if item.strip()]
    unknown = [name for name in names if name not in DATABASES]
    if not names or unknown:
        raise argparse.ArgumentTypeError("choose from {}".format(", ".join(DATABASES)))
    return names


def _sizes(value):
    try:
        sizes = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("sizes are whole numbers, e.g. 2000,6000")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("give one or more sizes above 0")
    return sizes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m sync_lab.demo",
        description=__doc__.strip().split("\n\n")[0],
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--records",
        type=int,
        help="records to generate on the server (default {})".format(DEFAULT_RECORDS),
    )
    size.add_argument(
        "--users",
        type=int,
        help="learners to generate on the server, {} records each".format(
            RECORDS_PER_LEARNER
        ),
    )
    parser.add_argument(
        "--client-records",
        type=int,
        help="records the client creates before pushing (default: as many as the server)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--mode",
        choices=list(MODES),
        help="run the server with the plugin on (default) or off; with --clients, "
        "only that mode",
    )
    what.add_argument(
        "--compare",
        action="store_true",
        help="sync the same data with the plugin on and off; writes a chart",
    )
    what.add_argument(
        "--bench",
        action="store_true",
        help="compare both modes at several sizes (see --sizes); writes a table and a chart",
    )
    parser.add_argument(
        "--clients",
        type=_counts,
        help="K stock clients, each with its own data, pull and then push at the "
        "same time, plugin on and off; a comma list runs each count (e.g. 4,8)",
    )
    parser.add_argument(
        "--databases",
        type=_databases,
        default=["sqlite"],
        help="with --clients: the server's databases, comma separated, from {} "
        "(default sqlite)".format(", ".join(DATABASES)),
    )
    parser.add_argument(
        "--churn",
        type=float,
        metavar="RATE",
        help="with --clients: the server's own users change learners, lessons and "
        "logs at about RATE rows per second while the clients pull and push; then "
        "each client syncs once more and must hold the server's data record by "
        "record",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_BENCH_SIZES),
        help="records per direction for --bench, comma separated (default {})".format(
            ",".join(str(s) for s in DEFAULT_BENCH_SIZES)
        ),
    )
    parser.add_argument(
        "--tiny-repeats",
        type=int,
        default=DEFAULT_TINY_REPEATS,
        help="round trips per mode for --bench sizes up to {} records; the report "
        "gives medians (default {})".format(TINY_RECORDS, DEFAULT_TINY_REPEATS),
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        help="records per request the client asks for (default: Kolibri's, 200)",
    )
    parser.add_argument(
        "--set",
        dest="sync_options",
        type=_sync_option,
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a [Sync] option of the plugin-on server, e.g. INLINE_STAGE_RECORDS=0; "
        "repeat for several",
    )
    parser.add_argument(
        "--option",
        dest="kolibri_options",
        type=_kolibri_option,
        action="append",
        default=[],
        metavar="SECTION.OPTION=VALUE",
        help="another options.ini value of the server in both modes, e.g. "
        "Tasks.USE_WORKER_MULTIPROCESSING=true; repeat for several",
    )
    parser.add_argument(
        "--server",
        choices=list(SERVERS),
        default=DEFAULT_SERVER,
        help="how the server runs: "
        + "; ".join("{}: {}".format(name, what) for name, (_, what) in SERVERS.items())
        + " (default {})".format(DEFAULT_SERVER),
    )
    parser.add_argument(
        "--client-niceness",
        type=int,
        default=0,
        metavar="N",
        help="with --clients: run the clients' commands at niceness N (1 to 19), so "
        "that on one machine they take the processor only when the server leaves "
        "it, as devices with processors of their own would (default 0: as the "
        "server)",
    )
    parser.add_argument(
        "--no-lock-probe",
        dest="lock_probe",
        action="store_false",
        help="with --clients on SQLite: leave out the probe that asks for the "
        "server's write lock every 50 ms to measure how long a writer waits. It is "
        "a writer the plugin's pieces let in, so without it a run measures a "
        "server whose own users do not write",
    )
    parser.add_argument(
        "--time-server-threads",
        action="store_true",
        help="with --clients: time each request and each job run inside the "
        "server by its thread's CPU, and report the push phase's by kind (where "
        "the server's processor goes, which wall times on a machine the clients "
        "share cannot tell)",
    )
    parser.add_argument(
        "--proxy-timeout",
        type=float,
        help="the proxy answers 504 when the server is silent this many seconds",
    )
    parser.add_argument(
        "--workdir",
        help="where to create the Kolibri homes (default: a new temporary folder)",
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help="where to write the report and chart (default ./{})".format(
            DEFAULT_OUTPUT
        ),
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the Kolibri homes (and their logs) afterwards",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the made-up data")
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=1800,
        help="seconds a sync command may take before it is stopped (default 1800)",
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=300,
        help="seconds to wait for the server's background jobs after the push",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the report")
    args = parser.parse_args(argv)
    args.mode_given = args.mode is not None
    if args.mode is None:
        args.mode = "on"
    if args.clients and (args.compare or args.bench):
        parser.error("--clients runs both modes itself; leave out --compare/--bench")
    if args.churn is not None and not args.clients:
        parser.error("--churn writes while --clients sync: give --clients too")
    if args.client_niceness and not args.clients:
        parser.error("--client-niceness is for the clients of --clients: give it too")
    if not args.lock_probe and not args.clients:
        parser.error("--no-lock-probe is for the server of --clients: give it too")
    if args.time_server_threads and not args.clients:
        parser.error(
            "--time-server-threads is for the server of --clients: give it too"
        )
    if not 0 <= args.client_niceness <= 19:
        parser.error("--client-niceness must be from 0 to 19")
    if args.churn is not None and args.churn <= 0:
        parser.error("--churn must be above 0 rows per second")
    if args.users is not None:
        args.records = args.users * RECORDS_PER_LEARNER
    if args.records is None:
        args.records = DEFAULT_RECORDS
    if args.records < 1:
        parser.error("--records and --users must be above 0")
    args.sync_options = dict(args.sync_options)
    kolibri_options = {}
    for section, option, setting in args.kolibri_options:
        kolibri_options.setdefault(section, {})[option] = setting
    args.kolibri_options = kolibri_options
    if args.tiny_repeats < 1:
        parser.error("--tiny-repeats must be 1 or more")
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error("--chunk-size must be above 0")
    if args.client_records is None:
        args.client_records = args.records
    missing = missing_for(args.server)
    if missing:
        parser.error("--server {}: {}".format(args.server, "; ".join(missing)))
    return args


def run(args, progress=None):
    """
    Run what ``args`` asks for.

    :return: Every mode's run
    :rtype: list[ModeRun]
    """
    progress = progress or Progress(quiet=args.quiet)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    own_workdir = args.workdir is None
    workdir = Path(
        tempfile.mkdtemp(prefix="sync-lab-demo-") if own_workdir else args.workdir
    )
    workdir.mkdir(parents=True, exist_ok=True)
    progress.say("Kolibri homes under {}".format(workdir))
    try:
        if args.clients:
            return run_many(args, workdir, output, progress)
        if args.bench:
            return run_bench(args, workdir, output, progress)
        if args.compare:
            return run_compare(args, workdir, output, progress)
        return run_single(args, workdir, output, progress)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    """
    :return: 0 if every sync exited 0 and every count matched, else 1
    :rtype: int
    """
    args = parse_args(argv)
    try:
        runs = run(args)
    except KeyboardInterrupt:
        print("interrupted; every Kolibri process the demo started has been stopped")
        return 130
    failed = [
        run.mode
        for run in runs
        if not (run.succeeded if hasattr(run, "succeeded") else _succeeded(run))
    ]
    if failed:
        print("\nnot a clean round trip with the plugin {}".format(" / ".join(failed)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
