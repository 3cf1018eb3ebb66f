"""
Many stock clients syncing with one server at the same time: the demo's
``--clients K`` mode.

Every client is a fresh device of its own. All of them pull the server's facility
at once; each then records activity of its own; then all of them push at once,
through a timing proxy. The run reports the longest request of each phase and the
longest of those where the stages run (see :func:`is_stage_request`), each
client's pull and push time, and checks the data: every sync completed, the server
holds every client's records exactly once and nothing twice, nothing is left
half-received or open, and every stage job completed.

With ``--churn RATE`` the server's own users write meanwhile: a
:class:`~sync_lab.harness.churn.Churn` process changes learners, lessons and logs
on the server from before the pulls until the pushes are over. Counts no longer say
whether a client is up to date then, so once the churn has stopped each client
syncs once more and its facility data is compared with the server's, record by
record (:func:`~sync_lab.harness.checks.compare_digests`).
"""

import contextlib
import os
import time

from ..harness import thread_cpu
from ..harness.checks import compare_digests
from ..harness.checks import expected_server_counts
from ..harness.checks import sync_states
from ..harness.churn import KINDS as CHURN_KINDS
from ..harness.churn import Churn
from ..harness.cpu import PhaseCpuMeter
from ..harness.dataset import COUNTED
from ..harness.dataset import generate_activity
from ..harness.jobs import wait_for_stage_jobs
from ..harness.proxy import BUFFERS_PATH
from ..harness.proxy import TRANSFER_SESSIONS_PATH
from ..harness.proxy import TimingProxy
from ..harness.scenario import DEFAULT_CREDENTIALS
from ..harness.scenario import all_at_once
from ..harness.signing import signing_backend
from ..harness.topology import DEFAULT_SERVER
from ..harness.topology import SERVERS
from ..harness.topology import describe_processes
from ..harness.topology import peak_rss_line
from ..harness.topology import start_server
from .report import chart_pyplot
from .write_lock import WriteLockProbe
from .write_lock import background_stage_spans
from .write_lock import describe_wait

__all__ = [
    "ManyClientsRun",
    "run_many_clients",
    "render_many_clients",
    "many_clients_chart_figures",
    "write_many_clients_chart",
]

_PUSH_STAGES = {("push", "dequeuing"), ("push", "deserializing"), ("push", "cleanup")}


class ManyClientsRun:
    """What happened when ``clients`` clients synced with one server at once."""

    def __init__(self, mode, database, clients, churn_rate=None, server=DEFAULT_SERVER):
        self.mode = mode
        self.database = database
        self.clients = clients
        #: How the server ran, a name in :data:`sync_lab.harness.topology.SERVERS`
        self.server = server
        #: The server's processes' peak memory at the end, when it can tell (see
        #: :meth:`~sync_lab.harness.uwsgi_server.UwsgiKolibriInstance.process_peaks`)
        self.process_peaks = None
        #: Writes per second the churn aimed at on the server, or ``None``: no churn
        self.churn_rate = churn_rate
        #: :class:`~sync_lab.harness.instances.CommandResult` of each client's pull
        #: and push, and, with the churn, of each client's sync once it had stopped
        self.pulls = []
        self.pushes = []
        self.final_syncs = []
        #: What each client generated between its pull and its push
        self.created = []
        #: Every :class:`~sync_lab.harness.proxy.Exchange` of each phase
        self.pull_exchanges = []
        self.push_exchanges = []
        self.final_exchanges = []
        self.server_state = None
        #: With the churn: its report (see :func:`sync_lab.harness.churn.churn`), how
        #: many records the server's facility data held at the end and how many of
        #: its rows were changed since morango last serialized them, and each
        #: client's :class:`~sync_lab.harness.checks.Differences` from it
        self.churn = None
        self.server_records = None
        self.server_dirty = None
        self.differences = None
        self.client_states = []
        #: On SQLite, every :class:`~sync_lab.bench.write_lock.LockWait` of the run, and
        #: the stage jobs the server logged (``None`` on PostgreSQL)
        self.lock_waits = None
        self.stage_spans = []
        #: :class:`~sync_lab.harness.cpu.PhaseCpu` of each phase, by name
        self.cpu = {}
        #: Seconds from the start of the push until its last client had exited and
        #: the last stage job the server ran for it had ended (see
        #: :func:`push_phase_seconds`), or ``None`` if no push ran
        self.push_phase = None
        #: The server's CPU seconds over the push phase, its stage jobs after the
        #: last client included, or ``None`` if no push ran
        self.push_phase_server_cpu = None
        #: Whether the lab's write-lock probe ran beside the clients (SQLite
        #: only); ``None`` until the run starts
        self.lock_probe = None
        #: The niceness the clients' commands ran at; 0 is the server's
        self.client_niceness = 0
        #: With ``--time-server-threads``: the server's requests and job runs begun
        #: in the push phase, by kind (see
        #: :func:`~sync_lab.harness.thread_cpu.summarize`); else ``None``
        self.push_thread_cpu = None
        #: With ``--time-server-threads``: the least the push phase's longest
        #: request could have taken in any order of serving, on one processor and
        #: on two, as :class:`~sync_lab.harness.thread_cpu.RequestBound`; else
        #: ``None``
        self.push_request_bounds = None
        #: With ``--time-server-threads``: the push phase's requests over a second
        #: inside the server, as
        #: :class:`~sync_lab.harness.thread_cpu.SlowRequests`; else ``None``
        self.push_slow_requests = None
        #: With the server's threads timed on Kolibri 0.19's SQLite: the turns
        #: taken in the plugin's queue of writers in the push phase, by kind
        #: (see :func:`~sync_lab.harness.thread_cpu.summarize_holds`), and the
        #: longest of them (:class:`~sync_lab.harness.thread_cpu.Hold`); else
        #: ``None``
        self.push_turn_holds = None
        self.push_longest_holds = None
        #: The RSA implementation morango signed with (see
        #: :func:`~sync_lab.harness.signing.signing_backend`)
        self.signing = None

    @property
    def syncs(self):
        return self.pulls + self.pushes + self.final_syncs

    @property
    def planned_syncs(self):
        """How many syncs a complete run makes."""
        return self.clients * (3 if self.churn_rate else 2)

    @property
    def exchanges(self):
        return self.pull_exchanges + self.push_exchanges + self.final_exchanges

    @property
    def longest(self):
        """The longest request of every phase, or ``None``."""
        return _longest(self.exchanges)

    def longest_lock_wait(self):
        """The longest wait for SQLite's write lock, or ``None``."""
        return (
            max(self.lock_waits, key=lambda w: w.seconds) if self.lock_waits else None
        )

    def longest_of(self, phase):
        return _longest(getattr(self, phase + "_exchanges"))

    def longest_stage_request(self, phase=None):
        """
        The longest of the requests where a sync's stages run (see
        :func:`is_stage_request`), of ``phase`` or of every phase, or ``None``.
        """
        exchanges = (
            self.exchanges if phase is None else getattr(self, phase + "_exchanges")
        )
        return _longest([e for e in exchanges if is_stage_request(e)])

    def refused(self):
        """Requests the server answered 503, as when a stage job cap is reached."""
        return [e for e in self.exchanges if e.status == 503 and not e.error]

    def checks(self):
        """
        :return: ``(what, passed, detail)`` for each data check
        :rtype: list
        """
        results = []
        failed = [n for n, sync in enumerate(self.pulls) if not sync.ok]
        results.append(("every pull completed", not failed, _clients(failed)))
        failed = [n for n, sync in enumerate(self.pushes) if not sync.ok]
        results.append(
            (
                "every push completed",
                len(self.pushes) == self.clients and not failed,
                _clients(failed) or ("" if self.pushes else "no push ran"),
            )
        )
        if self.churn_rate:
            results.extend(self._churn_checks())
        if self.server_state is None:
            return results
        if self.churn_rate:
            results.append(self._same_data_check())
        else:
            results.append(self._counts_check())
        results.extend(self._server_checks())
        return results

    def _churn_checks(self):
        failed = [n for n, sync in enumerate(self.final_syncs) if not sync.ok]
        churn = self.churn or {}
        return [
            (
                "every sync after the churn completed",
                len(self.final_syncs) == self.clients and not failed,
                _clients(failed) or ("" if self.final_syncs else "none ran"),
            ),
            (
                "the churn wrote on the server while the clients synced",
                churn.get("total", 0) > 0 and "failed" not in churn,
                churn.get("failed", "") if churn else "no report",
            ),
        ]

    def _same_data_check(self):
        what = "every client holds the server's data, record by record"
        if self.differences is None:
            return (what, False, "not compared")
        wrong = [
            "client-{}: {} records differ, e.g. {}".format(
                number, differences.count, "; ".join(differences.listed[:3])
            )
            for number, differences in enumerate(self.differences)
            if differences.count
        ]
        if not wrong:
            return (what, True, "{} records each".format(self.server_records))
        if self.server_dirty:
            wrong.append(
                "the server holds {} rows changed since it last serialized".format(
                    self.server_dirty
                )
            )
        return (what, False, " | ".join(wrong))

    def _counts_check(self):
        wrong = []
        for kind in COUNTED:
            server = self.server_state["counts"][kind]
            expected = expected_server_counts(kind, self.client_states, self.created)
            if expected != [server] * len(expected):
                wrong.append(
                    "{}: server {}, expected {}".format(kind, server, expected)
                )
        return (
            "server holds every client's records and its own",
            not wrong,
            "; ".join(wrong),
        )

    def _server_checks(self):
        results = []
        duplicates = {k: v for k, v in self.server_state["duplicates"].items() if v}
        results.append(("no row twice on the server", not duplicates, duplicates or ""))
        open_sessions = self.server_state["open_transfer_sessions"]
        results.append(
            (
                "no transfer session left open on the server",
                not open_sessions,
                len(open_sessions) or "",
            )
        )
        undeserialized = [self.server_state["undeserialized"]] + [
            state["undeserialized"] for state in self.client_states
        ]
        results.append(
            (
                "nothing received and left unapplied on any side",
                not any(undeserialized),
                undeserialized if any(undeserialized) else "",
            )
        )
        jobs = self.server_state.get("jobs", [])
        unfinished = [job for job in jobs if job["job_state"] != "COMPLETED"]
        results.append(
            (
                "every stage job completed",
                not unfinished,
                ", ".join(
                    "{} {}".format(job["stage"], job["job_state"]) for job in unfinished
                ),
            )
        )
        return results

    @property
    def ok(self):
        return all(passed for _, passed, _ in self.checks())


def _clients(numbers):
    return ", ".join("client-{}".format(n) for n in numbers)


def run_many_clients(
    mode, database, templates, clients, client_records, args, expected_jobs, progress
):
    """
    One many-clients run with the server in ``mode`` on ``database``.

    :type mode: sync_lab.bench.demo.Mode
    :type templates: sync_lab.harness.templates.Templates
    :param clients: How many clients sync at once
    :param client_records: Records each client creates before pushing
    :param expected_jobs: ``(direction, stage)`` pairs the server surely runs in
        jobs (see :func:`sync_lab.bench.demo.certain_jobs`)
    :param args: The demo's options: ``sync_timeout``, ``job_timeout``, ``seed``,
        ``churn`` (writes per second on the server, or ``None``) and ``server``
        (how the server runs, ``start`` if not given); the homes are kept as
        ``templates`` keeps its own
    :rtype: ManyClientsRun
    """
    server_kind = getattr(args, "server", DEFAULT_SERVER)
    run = ManyClientsRun(
        mode.name, database, clients, churn_rate=args.churn, server=server_kind
    )
    progress(
        "== {} clients, plugin {}, {}{}{}: {}".format(
            clients,
            mode.name,
            database,
            ", churn {:g}/s".format(args.churn) if args.churn else "",
            "" if server_kind == DEFAULT_SERVER else ", server " + server_kind,
            mode.description,
        )
    )
    server, facility = templates.new_server(
        database,
        "server-{}-{}-{}".format(mode.name, database, clients),
        instance_class=SERVERS[server_kind][0],
        plugin=mode.plugin,
        sync_options=mode.sync_options,
        options=getattr(args, "kolibri_options", None),
    )
    devices = [
        templates.new_client(
            "client-{}-{}-{}-{}".format(mode.name, database, clients, number)
        )
        for number in range(clients)
    ]
    run.client_niceness = getattr(args, "client_niceness", 0)
    for device in devices:
        device.niceness = run.client_niceness
    run.signing = server.call(signing_backend)
    if getattr(args, "time_server_threads", False):
        server.thread_cpu_dir = server.lab_dir / "thread-cpu"
    with contextlib.ExitStack() as stack:
        for instance in [server] + devices:
            stack.enter_context(instance)
        progress("{}: starting the server and its job workers".format(server.name))
        start_server(server)
        progress("{}: {}".format(server.name, describe_processes(server)))
        proxy = stack.enter_context(TimingProxy(server.base_url))
        probe = None
        run.lock_probe = database == "sqlite" and getattr(args, "lock_probe", True)
        if run.lock_probe:
            probe = stack.enter_context(WriteLockProbe(server.home / "db.sqlite3"))
        sync_args = (
            proxy.url,
            facility["id"],
            DEFAULT_CREDENTIALS.username,
            DEFAULT_CREDENTIALS.password,
        )
        churn = None
        if run.churn_rate:
            progress(
                "{}: its users start writing, {:g} rows/s".format(
                    server.name, run.churn_rate
                )
            )
            churn = stack.enter_context(
                Churn(server, facility["id"], rate=run.churn_rate, seed=args.seed)
            )

        progress("{} clients pulling at once".format(clients))
        with PhaseCpuMeter(server) as pull_cpu:
            run.pulls = all_at_once(
                lambda device: device.sync(
                    *sync_args, push=False, timeout=args.sync_timeout, check=False
                ),
                devices,
            )
        run.cpu["pull"] = pull_cpu.result
        run.pull_exchanges = proxy.exchanges
        proxy.clear()
        progress(_phase_line("pull", run.pulls))
        if not all(pull.ok for pull in run.pulls):
            _say_failures(run.pulls, progress)
        else:
            progress("each client records about {} new records".format(client_records))
            run.created = all_at_once(
                lambda numbered: numbered[1].call(
                    generate_activity,
                    records=client_records,
                    facility_id=facility["id"],
                    prefix="client{}".format(numbered[0]),
                    seed=args.seed + 10 + numbered[0],
                    existing_share=0.5,
                ),
                enumerate(devices),
            )
            progress("{} clients pushing at once".format(clients))
            push_started = time.time()
            with PhaseCpuMeter(server) as push_cpu:
                run.pushes = all_at_once(
                    lambda device: device.sync(
                        *sync_args, pull=False, timeout=args.sync_timeout, check=False
                    ),
                    devices,
                )
            clients_done = time.time()
            run.cpu["push"] = push_cpu.result
            run.push_exchanges = proxy.exchanges
            progress(_phase_line("push", run.pushes))
            _say_failures(run.pushes, progress)
            if churn is not None:
                run.churn = churn.stop()
                progress("{}: {}".format(server.name, churn_line(run.churn)))
            progress("{}: waiting for background stage jobs".format(server.name))
            wait_for_stage_jobs(
                server, expected_jobs & _PUSH_STAGES, timeout=args.job_timeout
            )
            run.push_phase = push_phase_seconds(
                push_started, clients_done, background_stage_spans(server.log_path)
            )
            # read after the wait, which runs in a process of the lab's, not the
            # server's: the jobs' work after the last client counts too
            run.push_phase_server_cpu = push_cpu.server_seconds_so_far()
            if server.thread_cpu_dir is not None:
                (
                    run.push_thread_cpu,
                    run.push_request_bounds,
                    run.push_slow_requests,
                    run.push_turn_holds,
                    run.push_longest_holds,
                ) = _thread_cpu_of_phase(
                    server.thread_cpu_dir, push_started, run.push_phase
                )
            if churn is not None:
                _sync_after_churn(run, devices, proxy, sync_args, args, progress)
                wait_for_stage_jobs(
                    server, expected_jobs & _PUSH_STAGES, timeout=args.job_timeout
                )
            if probe is not None:
                run.lock_waits = list(probe.waits)
                run.stage_spans = background_stage_spans(server.log_path)
            progress("checking the data on every side")
            run.server_state, run.client_states = sync_states(
                server, devices, facility["id"], digest=churn is not None
            )
            if churn is not None:
                _compare_data(run)
        if churn is not None:
            run.churn = churn.stop()
        if hasattr(server, "process_peaks"):
            run.process_peaks = server.process_peaks()
            progress(
                "{}: peak RSS: {}".format(server.name, peak_rss_line(run.process_peaks))
            )
        progress("{}: stopping the server".format(server.name))
    for what, passed, detail in run.checks():
        progress(
            "  {} {}{}".format(
                "ok  " if passed else "FAIL",
                what,
                ": {}".format(detail) if detail else "",
            )
        )
    return run


def push_phase_seconds(started, clients_done, spans):
    """
    How long the push took the server: from ``started`` until the last client had
    exited (``clients_done``) and the last stage job that started meanwhile had
    ended. Stock Kolibri ends with its last client; a server that leaves a cleanup,
    say, to a job ends when that job does.

    :param started: When the push began, in Unix time
    :param clients_done: When its last client exited, in Unix time
    :param spans: The server's stage jobs (see
        :func:`~sync_lab.bench.write_lock.background_stage_spans`)
    :rtype: float
    """
    ended = [end for _, _, start, end in spans if end is not None and start >= started]
    return max([clients_done] + ended) - started


def _sync_after_churn(run, devices, proxy, sync_args, args, progress):
    """Every client pulls and pushes once more, all at once, the churn stopped."""
    proxy.clear()
    progress("{} clients syncing once more at once".format(len(devices)))
    run.final_syncs = all_at_once(
        lambda device: device.sync(*sync_args, timeout=args.sync_timeout, check=False),
        devices,
    )
    run.final_exchanges = proxy.exchanges
    progress(_phase_line("sync after the churn", run.final_syncs))
    _say_failures(run.final_syncs, progress)


def _compare_data(run):
    """Each client's digest against the server's; the digests are let go."""
    server = run.server_state.pop("digest")
    run.server_records = sum(len(rows) for rows in server["records"].values())
    run.server_dirty = server["dirty_count"]
    run.differences = [
        compare_digests(
            server, state.pop("digest"), names=("server", "client-{}".format(number))
        )
        for number, state in enumerate(run.client_states)
    ]


def churn_line(report):
    """
    What the churn wrote, in one line.

    :param report: See :func:`sync_lab.harness.churn.churn`
    :rtype: str
    """
    if not report:
        return "churn: no report"
    if "failed" in report:
        return "churn: failed; its last output:\n" + report["failed"]
    writes = report["writes"]
    kinds = ", ".join(
        "{} {}".format(writes.get(kind, 0), kind.replace("_", " "))
        for kind in CHURN_KINDS + ("lesson_creations",)
    )
    line = "churn: {} writes in {:.0f} s, {:.1f}/s of {:g} aimed at ({})".format(
        report["total"], report["seconds"], report["rate"], report["target_rate"], kinds
    )
    errors = sum(report["errors"].values())
    if errors:
        line += "; {} failed, e.g. {}".format(errors, report["error_messages"][0])
    return line


def _phase_line(direction, syncs):
    return "{}: {} of {} exited 0, {:.1f}-{:.1f}s each".format(
        direction,
        sum(1 for sync in syncs if sync.ok),
        len(syncs),
        min(sync.duration for sync in syncs),
        max(sync.duration for sync in syncs),
    )


def _say_failures(syncs, progress):
    for number, sync in enumerate(syncs):
        if not sync.ok:
            progress(
                "client-{} failed; its last output:\n{}".format(number, sync.tail(8))
            )


def _exchange_line(exchange):
    if exchange is None:
        return "-"
    return "{:.3f} s ({} {}, stage {})".format(
        exchange.duration,
        exchange.method,
        exchange.path.split("?")[0],
        exchange.stage or exchange.requested_stage or "-",
    )


def _longest(exchanges):
    return max(exchanges, key=lambda e: e.duration) if exchanges else None


def is_stage_request(exchange):
    """
    Whether a request is one where the server runs or reports a transfer stage,
    where the plugin acts: a transfer session's ``PATCH`` (a stage asked for),
    ``GET`` (a poll) or ``DELETE`` (its close and cleanup), and the record chunks.
    The rest (certificates, nonces, sync sessions, a transfer session's creation)
    are morango's session set-up, which the plugin leaves as it is.
    """
    if exchange.path.startswith(BUFFERS_PATH):
        return True
    return exchange.path.startswith(TRANSFER_SESSIONS_PATH) and exchange.method in (
        "PATCH",
        "GET",
        "DELETE",
    )


#: The processors :func:`request_bound_line` gives the bound on: one
#: interpreter, and both of the lab machine's cores.
BOUND_PROCESSORS = (1, 2)


def _thread_cpu_of_phase(directory, started, seconds):
    """
    The requests and job runs begun in a phase by kind, and the bounds on its
    longest request, once the server has written them.
    """
    # each server process appends its records every few seconds
    time.sleep(thread_cpu.FLUSH_SECONDS + 0.5)
    records = thread_cpu.read_records(directory)
    window = {"since": started, "until": started + seconds}
    bounds = {
        processors: thread_cpu.least_longest_request(records, processors, **window)
        for processors in BOUND_PROCESSORS
    }
    holds = thread_cpu.read_holds(directory)
    in_phase = [h for h in holds if started <= h.started <= started + seconds]
    return (
        thread_cpu.summarize(records, **window),
        bounds,
        thread_cpu.slow_requests(records, **window),
        thread_cpu.summarize_holds(holds, **window) if holds else None,
        sorted(in_phase, key=lambda h: -h.held)[:LONGEST_HOLDS] if holds else None,
    )


#: How many of the push phase's longest turns in the queue of writers the
#: report lists.
LONGEST_HOLDS = 8


def turn_hold_lines(rows, longest, top=10):
    """
    The report's lines on who held the plugin's write turn in the push phase
    (the time every queued writer waited for), and its longest holds.

    :param rows: See :func:`~sync_lab.harness.thread_cpu.summarize_holds`
    :param longest: The longest :class:`~sync_lab.harness.thread_cpu.Hold`\\ s
    :rtype: list[str]
    """
    held = sum(row[2] for row in rows)
    lines = [
        "push phase, the write turn held (queue of writers): {:.1f} s in all, "
        "{} turns".format(held, sum(row[1] for row in rows))
    ]
    for kind, count, seconds, cpu, most in rows[:top]:
        lines.append(
            "  {:7.2f} s  {:5d} x  {:6.1f} ms each, {:3.0%} on the processor, "
            "longest {:5.2f} s  {}".format(
                seconds,
                count,
                1000.0 * seconds / count,
                cpu / seconds if seconds else 0,
                most,
                kind,
            )
        )
    lines.append("push phase, the longest turns held:")
    for hold in longest:
        lines.append(
            "  {:5.2f} s held ({:5.2f} s on the processor) after {:5.2f} s "
            "waiting  {}".format(hold.held, hold.cpu, hold.waited, hold.kind)
        )
    return lines


def slow_requests_line(slow):
    """
    The report's line on where the push phase's requests over a second spent
    their time inside the server.

    :param slow: :class:`~sync_lab.harness.thread_cpu.SlowRequests`
    :rtype: str
    """
    if not slow.count:
        return "push phase, requests over 1 s inside the server: none"
    return (
        "push phase, requests over 1 s inside the server: {}, {:.1f} s in all: "
        "{:.0%} in Kolibri's database ({:.0%} waiting to begin write "
        "transactions, {:.0%} reading, {:.0%} writing outside a transaction), "
        "{:.0%} in job storage's, {:.0%} outside "
        "both on the processor, {:.0%} outside both waiting ({:.0%} in the "
        "queue of writers, the rest for the interpreter's lock or in "
        "sleeps)".format(
            slow.count,
            slow.wall,
            slow.database / slow.wall,
            slow.lock / slow.wall,
            slow.reads / slow.wall,
            slow.autocommit / slow.wall,
            slow.jobs / slow.wall,
            slow.cpu_outside / slow.wall,
            slow.waiting / slow.wall,
            slow.queued / slow.wall,
        )
    )


def request_bound_line(bounds):
    """
    The report's line on the least the push phase's longest request could have
    taken, whatever the order the server served its requests in (see
    :func:`~sync_lab.harness.thread_cpu.least_longest_request`): above a second,
    no scheduling of the server's could have kept every request under one.

    :param bounds: :class:`~sync_lab.harness.thread_cpu.RequestBound` by processors
    :rtype: str
    """
    parts = []
    for processors, bound in sorted(bounds.items()):
        if bound is None:
            continue
        parts.append(
            "{:.2f} s on {} ({} requests begun within {:.2f} s, {:.2f} s of CPU)".format(
                max(bound.seconds, 0.0),
                "one processor"
                if processors == 1
                else "{} processors".format(processors),
                bound.requests,
                bound.last - bound.first,
                bound.cpu,
            )
        )
    return "push phase, the least its longest request could take in any order: " + (
        "; ".join(parts) or "-"
    )


def thread_cpu_lines(rows, process_cpu, top=12):
    """
    The report's lines on the push phase's requests and job runs.

    :param rows: See :func:`~sync_lab.harness.thread_cpu.summarize`
    :param process_cpu: The server's CPU seconds over the phase, or ``None``
    :rtype: list[str]
    """
    timed = sum(row[2] for row in rows)
    lines = [
        "push phase, by request and job run (CPU of its thread): {:.1f} s in all"
        "{}".format(
            timed,
            ""
            if process_cpu is None
            else "; the server's processes {:.1f} s".format(process_cpu),
        )
    ]
    for kind, count, cpu, wall in rows[:top]:
        lines.append(
            "  {:7.2f} s  {:5d} x  {:6.1f} ms each  {}".format(
                cpu, count, 1000.0 * cpu / count, kind
            )
        )
    if len(rows) > top:
        lines.append(
            "  {:7.2f} s  the other {} kinds".format(
                sum(row[2] for row in rows[top:]), len(rows) - top
            )
        )
    return lines


def _over(run, seconds):
    return sum(1 for e in run.exchanges if e.duration > seconds)


def _in_flight_at(exchange, exchanges):
    """How many other requests the server was serving as ``exchange`` began."""
    return sum(
        1
        for other in exchanges
        if other is not exchange and other.started <= exchange.started < other.ended
    )


def slow_request_lines(run, seconds=1.0):
    """
    The report's lines on the requests over ``seconds``, by phase and kind (see
    :attr:`~sync_lab.harness.proxy.Exchange.kind`), each with how many requests the
    server was already serving when one began: what tells a request kept waiting
    by a stage's work from one that shared the server with a crowd.

    :rtype: list[str]
    """
    groups = {}
    for phase in ("pull", "push", "final"):
        exchanges = getattr(run, phase + "_exchanges")
        for exchange in exchanges:
            if exchange.duration > seconds:
                groups.setdefault((phase, exchange.kind), []).append(
                    (exchange.duration, _in_flight_at(exchange, exchanges))
                )
    if not groups:
        return []
    lines = [
        "over {:g} s, by phase and kind (longest; requests in flight as each "
        "began, lower median and most):".format(seconds)
    ]
    for (phase, kind), slow in sorted(
        groups.items(), key=lambda item: (-len(item[1]), item[0])
    ):
        in_flight = sorted(count for _, count in slow)
        lines.append(
            "  {:5} {:4d} x  {:7.3f} s  {:3d} / {:3d}  {}".format(
                phase,
                len(slow),
                max(duration for duration, _ in slow),
                in_flight[(len(in_flight) - 1) // 2],
                in_flight[-1],
                kind,
            )
        )
    return lines


def render_many_clients(runs):
    """
    :param runs: :class:`ManyClientsRun` objects
    :rtype: str
    """
    lines = []
    for run in runs:
        lines.append(
            "== {} clients at once, plugin {}, {}{}".format(
                run.clients,
                run.mode,
                run.database,
                ", the server's users writing {:g} rows/s".format(run.churn_rate)
                if run.churn_rate
                else "",
            )
        )
        if run.server != DEFAULT_SERVER:
            lines.append("server: {}".format(SERVERS[run.server][1]))
        lines.append(
            "RSA signing: {}; clients' niceness: {}{}".format(
                run.signing or "-",
                run.client_niceness,
                "; no write-lock probe"
                if run.lock_probe is False and run.database == "sqlite"
                else "",
            )
        )
        if run.push_phase is not None:
            lines.append(
                "push phase: {:.1f} s, until the last client exited and the last "
                "stage job of the push ended; the server's CPU in it: {}".format(
                    run.push_phase, _seconds_cell(run.push_phase_server_cpu)
                )
            )
        if run.push_thread_cpu is not None:
            lines.extend(
                thread_cpu_lines(run.push_thread_cpu, run.push_phase_server_cpu)
            )
        if run.push_request_bounds is not None:
            lines.append(request_bound_line(run.push_request_bounds))
        if run.push_slow_requests is not None:
            lines.append(slow_requests_line(run.push_slow_requests))
        if run.push_turn_holds:
            lines.extend(turn_hold_lines(run.push_turn_holds, run.push_longest_holds))
        if run.process_peaks:
            lines.append("peak RSS: {}".format(peak_rss_line(run.process_peaks)))
        lines.append("longest pull request: " + _exchange_line(run.longest_of("pull")))
        lines.append("longest push request: " + _exchange_line(run.longest_of("push")))
        for phase in ("pull", "push"):
            lines.append(
                "longest {} stage request: ".format(phase)
                + _exchange_line(run.longest_stage_request(phase))
            )
        if run.churn_rate:
            lines.append(
                "longest request after the churn: "
                + _exchange_line(run.longest_of("final"))
            )
            lines.append(churn_line(run.churn))
        if run.lock_waits:
            exchanges = run.exchanges
            lines.append(
                "write lock: {} looks, {} waited over 0.2 s; the longest:".format(
                    len(run.lock_waits),
                    sum(1 for w in run.lock_waits if w.seconds > 0.2),
                )
            )
            for wait in sorted(run.lock_waits, key=lambda w: -w.seconds)[:3]:
                lines.append(
                    "  {:.3f} s, while: {}".format(
                        wait.seconds,
                        describe_wait(wait, run.stage_spans, exchanges) or "-",
                    )
                )
        lines.append(
            "requests: {}; over 1 s: {}; refused (503): {}".format(
                len(run.exchanges),
                _over(run, 1.0),
                len(run.refused()),
            )
        )
        lines.extend(slow_request_lines(run))
        for phase, cpu in run.cpu.items():
            lines.append(
                "CPU during the {}: server {:.1f} s, clients {:.1f} s, in {:.1f} s "
                "of {} cores".format(
                    phase,
                    cpu.server_seconds,
                    cpu.clients_seconds,
                    cpu.wall_seconds,
                    os.cpu_count(),
                )
            )
        header = "client   pull       push       records pushed"
        if run.churn_rate:
            header += "  sync after   same data as the server"
        lines.append(header)
        for number in range(run.clients):
            pull = _nth(run.pulls, number)
            push = _nth(run.pushes, number)
            created = run.created[number]["total"] if run.created else "-"
            line = "{:<8} {:<10} {:<10} {:<15}".format(
                number, _sync_cell(pull), _sync_cell(push), created
            )
            if run.churn_rate:
                line += " {:<12} {}".format(
                    _sync_cell(_nth(run.final_syncs, number)),
                    _same_data_cell(_nth(run.differences or [], number)),
                )
            lines.append(line.rstrip())
        for what, passed, detail in run.checks():
            lines.append(
                "{} {}{}".format(
                    "ok  " if passed else "FAIL",
                    what,
                    ": {}".format(detail) if detail else "",
                )
            )
        lines.append("")
    lines.append("== summary")
    lines.append(
        "clients  database    plugin  longest request  longest stage request  "
        "over 1 s  longest lock wait  slowest pull  slowest push  push phase  "
        "push phase CPU server  "
        "syncs ok  same data  churn rows/s  data checks"
    )
    for run in runs:
        longest = run.longest
        longest_stage = run.longest_stage_request()
        lines.append(
            "{:<8} {:<11} {:<7} {:<16} {:<22} {:<9} {:<18} {:<13} {:<13} {:<11} "
            "{:<22} {:<9} {:<10} {:<13} {}".format(
                run.clients,
                run.database,
                run.mode,
                "{:.3f} s".format(longest.duration) if longest else "-",
                "{:.3f} s".format(longest_stage.duration) if longest_stage else "-",
                _over(run, 1.0),
                _lock_cell(run),
                _slowest(run.pulls),
                _slowest(run.pushes),
                "-" if run.push_phase is None else "{:.1f} s".format(run.push_phase),
                _seconds_cell(run.push_phase_server_cpu),
                "{}/{}".format(
                    sum(1 for sync in run.syncs if sync.ok), run.planned_syncs
                ),
                _same_data_summary(run),
                _churn_rate_cell(run),
                "pass" if run.ok else "FAIL",
            )
        )
    return "\n".join(lines)


def _seconds_cell(seconds):
    return "-" if seconds is None else "{:.1f} s".format(seconds)


def _nth(items, number):
    return items[number] if number < len(items) else None


def _same_data_cell(differences):
    if differences is None:
        return "-"
    return "yes" if not differences.count else "no, {} differ".format(differences.count)


def _same_data_summary(run):
    if run.differences is None:
        return "-"
    return "{}/{}".format(
        sum(1 for differences in run.differences if not differences.count),
        run.clients,
    )


def _churn_rate_cell(run):
    if not run.churn:
        return "-"
    return "{:.0f} of {:g}".format(run.churn.get("rate", 0), run.churn_rate)


def _sync_cell(sync):
    if sync is None:
        return "-"
    return "{:.1f} s{}".format(sync.duration, "" if sync.ok else " FAIL")


def _slowest(syncs):
    slowest = _longest_duration(syncs)
    return "-" if slowest is None else "{:.1f} s".format(slowest)


def _lock_cell(run):
    wait = run.longest_lock_wait()
    return "{:.3f} s".format(wait.seconds) if wait else "-"


#: The chart's panels: what each shows, and how it is read from a run
_CHART_PANELS = (
    ("Slowest push (s)", lambda run: _longest_duration(run.pushes)),
    ("Push phase (s)", lambda run: run.push_phase),
    ("Longest request (s, log scale)", lambda run: _duration(run.longest)),
)


def _longest_duration(syncs):
    return max((sync.duration for sync in syncs), default=None)


def _duration(exchange):
    return None if exchange is None else exchange.duration


def many_clients_chart_figures(runs):
    """
    What the chart draws: one label per number of clients (with its database when
    the runs span several), in the order run, and for each panel each mode's
    figure per label, ``None`` where that mode did not run or has no figure.

    :type runs: list[ManyClientsRun]
    :return: ``(labels, {panel title: {"on": [...], "off": [...]}})``
    """
    groups = []
    for run in runs:
        if (run.clients, run.database) not in groups:
            groups.append((run.clients, run.database))
    several_databases = len({database for _, database in groups}) > 1
    labels = [
        "{}\n{}".format(clients, database) if several_databases else str(clients)
        for clients, database in groups
    ]
    runs_of_mode = {
        mode: {(r.clients, r.database): r for r in runs if r.mode == mode}
        for mode in ("on", "off")
    }
    figures = {
        title: {
            mode: [measure(by_group[g]) if g in by_group else None for g in groups]
            for mode, by_group in runs_of_mode.items()
        }
        for title, measure in _CHART_PANELS
    }
    return labels, figures


def write_many_clients_chart(runs, path):
    """
    The slowest push, the push phase and the longest request of each run, plugin
    on beside off for each number of clients: what a class set waits for, and
    whether any request came near a proxy's timeout. The longest request is on a
    log scale, since stock's run to a minute where the plugin's stay near a
    second; a dashed line marks one second.

    :type runs: list[ManyClientsRun]
    :return: The path written, or ``None`` without matplotlib or runs
    """
    pyplot = chart_pyplot()
    if pyplot is None or not runs:
        return None
    labels, figures = many_clients_chart_figures(runs)
    positions = list(range(len(labels)))
    width = 0.38
    figure, axes = pyplot.subplots(1, len(figures), figsize=(14, 4))
    for axis, (title, by_mode) in zip(axes, figures.items()):
        for offset, mode, colour in ((-1, "on", "tab:green"), (1, "off", "tab:gray")):
            values = by_mode[mode]
            if all(value is None for value in values):
                continue
            bars = axis.bar(
                [p + offset * width / 2 for p in positions],
                [value or 0 for value in values],
                width,
                color=colour,
                label="plugin " + mode,
            )
            axis.bar_label(
                bars,
                labels=["" if v is None else "{:.1f}".format(v) for v in values],
                fontsize=8,
            )
        axis.set_title(title)
        axis.set_xticks(positions)
        axis.set_xticklabels(labels)
        axis.set_xlabel("clients at once")
        axis.legend()
    axes[-1].set_yscale("log")
    axes[-1].axhline(1.0, color="tab:red", linestyle="--", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
