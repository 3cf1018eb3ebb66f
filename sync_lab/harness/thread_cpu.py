"""
The processor time of each request and each Kolibri job inside a server, by its
thread's CPU clock: where the server's process spends its processor, which a
run's wall times cannot tell on a machine its clients share.

Under ``kolibri start`` every request and every job is a thread of one process
and one interpreter, so what one spends the others wait for. The server's
processes load this module at start-up (``sitecustomize`` in
:data:`SITE_DIR`, put on their path by
:class:`~sync_lab.harness.instances.KolibriInstance` when its ``thread_cpu_dir``
is set) and wrap two functions as they are imported:

- Django's ``WSGIHandler.__call__``: a request, from the ``request_started``
  signal (where the plugin checks a polled stage) to the response;
- Kolibri's ``Job.execute``: a job's run, its marks in job storage included;
- the statements the thread runs on Kolibri's database (Django's SQLite
  cursor), among them, on Kolibri 0.19, the start of each transaction (``BEGIN
  IMMEDIATE``, which waits for the write lock), and on job storage's (through
  SQLAlchemy): their wall and CPU seconds count towards the request or job run of
  the thread, so the time it spent outside both, and off the processor there,
  is what it waited for the interpreter's lock (or slept).

Each process appends a line per request or job run to a file of its own in the
directory the environment names (:data:`DIR_ENV`). Work outside both, such as
cheroot's own handling of a connection or the threads that take jobs, is left
to the process's total CPU to show.
"""

import collections
import importlib.abc
import os
import re
import sys
import threading
import time
from pathlib import Path

__all__ = [
    "DIR_ENV",
    "FLUSH_SECONDS",
    "SITE_DIR",
    "Hold",
    "Record",
    "RequestBound",
    "install",
    "least_longest_request",
    "slow_requests",
    "read_holds",
    "read_records",
    "summarize",
    "summarize_holds",
]

#: The environment variable naming the directory the records go to.
DIR_ENV = "SYNC_LAB_THREAD_CPU_DIR"
#: The directory whose ``sitecustomize`` installs the timing in a server process.
SITE_DIR = Path(__file__).resolve().parent / "thread_cpu_site"

#: The statements timed inside a request or job run (see :data:`_STATEMENTS`):
#: ``begin`` (Kolibri 0.19's ``BEGIN IMMEDIATE``, its wait for the write lock),
#: ``database`` (every statement on Kolibri's database, ``begin`` included) and
#: ``jobs`` (job storage's); ``reads`` are the ``database`` statements that only
#: read (``SELECT``), which in SQLite's WAL mode wait for no other connection,
#: and ``autocommit`` the ones that write outside a transaction, each of which
#: waits for the write lock itself; ``queued`` is not a statement but the wait
#: for a turn in the plugin's queue of writers, before the statement that takes
#: it (Kolibri 0.19 on SQLite).
STATEMENT_KINDS = ("begin", "database", "jobs", "reads", "autocommit", "queued")
#: One request or job run: when it began (epoch seconds), its kind, the CPU
#: seconds of its thread and its wall seconds; then the wall seconds of its
#: ``begin`` statements, the wall and CPU seconds of its ``database`` statements
#: and of its ``jobs`` statements, and the wall seconds of its ``reads`` and of
#: its ``autocommit`` writes, and its wait in the queue of writers (``queued``)
#: (0 in the files of older runs).
Record = collections.namedtuple(
    "Record",
    (
        "started",
        "kind",
        "cpu",
        "wall",
        "lock",
        "database",
        "database_cpu",
        "jobs",
        "jobs_cpu",
        "reads",
        "autocommit",
        "queued",
    ),
    defaults=(0.0,) * 8,
)
#: What :func:`least_longest_request` found: the least seconds, and the requests
#: that force them: when the first and the last began (epoch seconds), how many
#: they are and their CPU seconds in all.
RequestBound = collections.namedtuple(
    "RequestBound", ("seconds", "first", "last", "requests", "cpu")
)

#: How often a process appends its records to its file.
FLUSH_SECONDS = 2
_ID_IN_PATH = re.compile(r"[0-9a-f]{32}")


class _Recorder:
    """Lines kept in memory and appended to this process's file now and then."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.lock = threading.Lock()
        self.lines = []
        self.statements = []
        self.holds = []
        self.path = None
        self.statements_path = None
        self.holds_path = None
        self.start()

    def start(self):
        """Write to a file of this process's own, every few seconds."""
        self.path = self.directory / "thread-cpu-{}.tsv".format(os.getpid())
        self.statements_path = self.directory / "slow-statements-{}.tsv".format(
            os.getpid()
        )
        self.holds_path = self.directory / "turn-holds-{}.tsv".format(os.getpid())
        threading.Thread(
            target=self._flush_forever, name="sync-lab-thread-cpu", daemon=True
        ).start()

    def restart_in_child(self):
        """After a fork (uwsgi's workers): a file and a flushing thread of its own."""
        self.lock = threading.Lock()
        self.lines = []
        self.statements = []
        self.holds = []
        self.start()

    def add(self, started, kind, *seconds):
        with self.lock:
            self.lines.append(
                "\t".join(
                    ["{:.3f}".format(started), kind]
                    + ["{:.5f}".format(n) for n in seconds]
                )
                + "\n"
            )

    def add_statement(self, wall, autocommit, sql):
        with self.lock:
            self.statements.append(
                "{:.3f}\t{:.5f}\t{}\t{}\n".format(
                    time.time(),
                    wall,
                    "autocommit" if autocommit else "transaction",
                    " ".join(sql.split())[:160],
                )
            )

    def add_hold(self, started, kind, waited, held, held_cpu, statements):
        with self.lock:
            self.holds.append(
                "{:.3f}\t{}\t{:.5f}\t{:.5f}\t{:.5f}\t{}\n".format(
                    started,
                    kind,
                    waited,
                    held,
                    held_cpu,
                    " | ".join(statements),
                )
            )

    def flush(self):
        with self.lock:
            lines, self.lines = self.lines, []
            statements, self.statements = self.statements, []
            holds, self.holds = self.holds, []
        if holds:
            with open(self.holds_path, "a") as out:
                out.write("".join(holds))
        if lines:
            with open(self.path, "a") as out:
                out.write("".join(lines))
        if statements:
            with open(self.statements_path, "a") as out:
                out.write("".join(statements))

    def _flush_forever(self):
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()


# per thread: the wall and CPU seconds of its statements so far, by kind
_statements = threading.local()


def _statement_seconds():
    """This thread's statement seconds so far, as :class:`Record` lists them."""
    totals = getattr(_statements, "totals", None)
    if totals is None:
        totals = _statements.totals = {kind: [0.0, 0.0] for kind in STATEMENT_KINDS}
    return (
        totals["begin"][0],
        totals["database"][0],
        totals["database"][1],
        totals["jobs"][0],
        totals["jobs"][1],
        totals["reads"][0],
        totals["autocommit"][0],
        totals["queued"][0],
    )


def _timed(recorder, function, kind_of):
    def timed(*args, **kwargs):
        cpu_started = time.thread_time()
        started = time.time()
        before = _statement_seconds()
        # the kind of the thread's request or job run, for the turns it holds
        kind = kind_of(*args)
        kind_before = getattr(_statements, "kind", None)
        _statements.kind = kind
        try:
            return function(*args, **kwargs)
        finally:
            _statements.kind = kind_before
            after = _statement_seconds()
            recorder.add(
                started,
                kind,
                time.thread_time() - cpu_started,
                time.time() - started,
                *(b - a for a, b in zip(before, after)),
            )

    timed.__wrapped__ = function
    return timed


#: How many of a turn's first statements its line in ``turn-holds-<pid>.tsv``
#: gives, and how much of each one's SQL.
HOLD_STATEMENTS = 3
HOLD_SQL_CHARS = 70

#: A statement on Kolibri's database that takes longer is written, with the
#: start of its SQL, to the process's ``slow-statements-<pid>.tsv``.
SLOW_STATEMENT_SECONDS = 0.5


def _sql_of(args):
    """The query of a cursor's ``execute(query, ...)``, or ``""``."""
    return str(args[1]).lstrip() if len(args) > 1 else ""


def _outside_a_transaction(args):
    """Whether the cursor's connection (``args[0]``) has no transaction open."""
    connection = getattr(args[0], "connection", None) if args else None
    return connection is not None and not getattr(connection, "in_transaction", True)


def _timed_statement(kind, function, recorder=None):
    def timed_statement(*args, **kwargs):
        _statement_seconds()
        autocommit = kind == "database" and _outside_a_transaction(args)
        cpu_started = time.thread_time()
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            wall = time.monotonic() - started
            total = _statements.totals[kind]
            total[0] += wall
            total[1] += time.thread_time() - cpu_started
            if kind == "database":
                hold = getattr(_statements, "hold", None)
                if hold is not None and len(hold[4]) < HOLD_STATEMENTS:
                    hold[4].append(" ".join(_sql_of(args).split())[:HOLD_SQL_CHARS])
                verb = _sql_of(args)[:6].upper()
                if verb == "SELECT":
                    _statements.totals["reads"][0] += wall
                elif autocommit and not verb.startswith("BEGIN"):
                    _statements.totals["autocommit"][0] += wall
                if wall > SLOW_STATEMENT_SECONDS and recorder is not None:
                    recorder.add_statement(wall, autocommit, _sql_of(args))

    timed_statement.__wrapped__ = function
    return timed_statement


def request_kind(environ):
    """``"GET /api/morango/v1/transfersessions/<id>/"``: ids left out. :rtype: str"""
    path = _ID_IN_PATH.sub("<id>", environ.get("PATH_INFO", ""))
    return "{} {}".format(environ.get("REQUEST_METHOD", "?"), path)


def job_kind(job):
    """``"job run_background_stage deserializing"``. :rtype: str"""
    stage = (job.kwargs or {}).get("stage", "")
    return "job {} {}".format(job.func.rsplit(".", 1)[-1], stage).rstrip()


def _wrap_wsgi(module, recorder):
    handler = module.WSGIHandler
    handler.__call__ = _timed(
        recorder, handler.__call__, lambda self, environ, *rest: request_kind(environ)
    )


def _wrap_job(module, recorder):
    job = module.Job
    job.execute = _timed(recorder, job.execute, job_kind)


#: Kolibri 0.19's SQLite backend, which begins every transaction IMMEDIATE.
BEGIN_MODULE = "kolibri.deployment.default.db.backends.sqlite3.base"

#: The statements timed, by module: the class, the kind of statement (see
#: :data:`STATEMENT_KINDS`) and the methods that run them.
STATEMENT_METHODS = {
    BEGIN_MODULE: (
        "DatabaseWrapper",
        "begin",
        ("_start_transaction_under_autocommit",),
    ),
    "django.db.backends.sqlite3.base": (
        "SQLiteCursorWrapper",
        "database",
        ("execute", "executemany"),
    ),
    # job storage is the server's one user of SQLAlchemy
    "sqlalchemy.engine.default": (
        "DefaultDialect",
        "jobs",
        ("do_execute", "do_executemany", "do_execute_no_params", "do_commit"),
    ),
}


def _wrap_statements(module, recorder):
    class_name, kind, names = STATEMENT_METHODS[module.__name__]
    cls = getattr(module, class_name)
    for name in names:
        setattr(cls, name, _timed_statement(kind, getattr(cls, name), recorder))


#: The plugin's queue of the main database's writers (Kolibri 0.19 on SQLite).
TURN_MODULE = "kolibri_sync_extras_plugin.write_queue"


def _wrap_turn(module, recorder):
    """
    Each turn a thread takes in the plugin's queue of writers: when it took it,
    the kind of the thread's request or job run, how long it waited, how long it
    held the turn and its processor time while holding it.
    """
    turn = module.FairTurn
    acquire, release = turn.acquire, turn.release

    def timed_acquire(self, timeout, *args, **kwargs):
        asked = time.monotonic()
        taken = acquire(self, timeout, *args, **kwargs)
        if getattr(_statements, "totals", None) is not None:
            _statements.totals["queued"][0] += time.monotonic() - asked
        if taken:
            _statements.hold = (
                time.time(),
                time.monotonic(),
                time.thread_time(),
                time.monotonic() - asked,
                [],
            )
        return taken

    def timed_release(self):
        hold = getattr(_statements, "hold", None)
        _statements.hold = None
        release(self)
        if hold is not None:
            started, monotonic, cpu, waited, statements = hold
            recorder.add_hold(
                started,
                getattr(_statements, "kind", None) or "outside requests and jobs",
                waited,
                time.monotonic() - monotonic,
                time.thread_time() - cpu,
                statements,
            )

    timed_acquire.__wrapped__ = acquire
    timed_release.__wrapped__ = release
    turn.acquire, turn.release = timed_acquire, timed_release


_WRAPPERS = {
    "django.core.handlers.wsgi": _wrap_wsgi,
    TURN_MODULE: _wrap_turn,
    "kolibri.core.tasks.job": _wrap_job,
    **{module_name: _wrap_statements for module_name in STATEMENT_METHODS},
}


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps a module of :data:`_WRAPPERS` once it has been executed."""

    def __init__(self, recorder):
        self.recorder = recorder

    def find_spec(self, name, path, target=None):
        if name not in _WRAPPERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                self._wrap_after_exec(spec, _WRAPPERS[name])
                return spec
        return None

    def _wrap_after_exec(self, spec, wrap):
        exec_module = spec.loader.exec_module
        recorder = self.recorder

        def exec_and_wrap(module):
            exec_module(module)
            wrap(module, recorder)

        spec.loader.exec_module = exec_and_wrap


def install(directory=None):
    """
    Time every request and job run of this process into ``directory`` (by default
    the one :data:`DIR_ENV` names; nothing is done without one). Modules already
    imported are wrapped at once, the others as they are imported.

    :return: The recorder, or ``None`` when there is no directory
    """
    directory = directory or os.environ.get(DIR_ENV)
    if not directory:
        return None
    recorder = _Recorder(directory)
    for name, wrap in _WRAPPERS.items():
        if name in sys.modules:
            wrap(sys.modules[name], recorder)
    if any(name not in sys.modules for name in _WRAPPERS):
        sys.meta_path.insert(0, _WrapOnImport(recorder))
    import atexit

    atexit.register(recorder.flush)
    os.register_at_fork(after_in_child=recorder.restart_in_child)
    return recorder


def read_records(directory):
    """
    :return: Every record the server's processes wrote, oldest first
    :rtype: list[Record]
    """
    records = []
    for path in sorted(Path(directory).glob("thread-cpu-*.tsv")):
        with open(path) as lines:
            for line in lines:
                started, kind, *seconds = line.rstrip("\n").split("\t")
                records.append(
                    Record(float(started), kind, *(float(n) for n in seconds))
                )
    return sorted(records)


#: One turn a thread held in the plugin's queue of writers (see
#: :func:`_wrap_turn`): when it took it (epoch seconds), its request or job
#: run's kind, the seconds it waited, held it and ran while holding it,
#: and the start of its first statements (:data:`HOLD_STATEMENTS`).
Hold = collections.namedtuple(
    "Hold", ("started", "kind", "waited", "held", "cpu", "statements")
)


def read_holds(directory):
    """
    :return: Every turn held in the server's processes, oldest first
    :rtype: list[Hold]
    """
    holds = []
    for path in sorted(Path(directory).glob("turn-holds-*.tsv")):
        with open(path) as lines:
            for line in lines:
                started, kind, *seconds, statements = line.rstrip("\n").split("\t")
                holds.append(
                    Hold(
                        float(started),
                        kind,
                        *(float(n) for n in seconds),
                        statements,
                    )
                )
    return sorted(holds)


def summarize_holds(holds, since=None, until=None):
    """
    The turns taken between ``since`` and ``until`` (epoch seconds), by kind:
    how many, the seconds held in all, of them on the processor, and the
    longest; the most held first.

    :return: ``[(kind, count, held, cpu, longest)]``
    :rtype: list[tuple]
    """
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for hold in _begun(holds, since, until):
        total = totals[hold.kind]
        total[0] += 1
        total[1] += hold.held
        total[2] += hold.cpu
        total[3] = max(total[3], hold.held)
    rows = [(kind, *total) for kind, total in totals.items()]
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def _begun(records, since, until):
    """The records begun between ``since`` and ``until``, either left open."""
    return [
        record
        for record in records
        if (since is None or record.started >= since)
        and (until is None or record.started <= until)
    ]


def _requests_begun(records, since, until):
    """The requests (no job runs) among :func:`_begun`'s records."""
    return [r for r in _begun(records, since, until) if not r.kind.startswith("job ")]


def summarize(records, since=None, until=None):
    """
    The records begun between ``since`` and ``until`` (epoch seconds), by kind:
    how many, their threads' CPU seconds and their wall seconds, the most CPU
    first.

    :return: ``[(kind, count, cpu, wall)]``
    :rtype: list[tuple]
    """
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for record in _begun(records, since, until):
        total = totals[record.kind]
        total[0] += 1
        total[1] += record.cpu
        total[2] += record.wall
    rows = [(kind, n, cpu, wall) for kind, (n, cpu, wall) in totals.items()]
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def least_longest_request(records, processors=1.0, since=None, until=None):
    """
    The least time the longest request begun between ``since`` and ``until`` could
    have taken, whatever the order the server served them in, with the work they
    took and ``processors`` to run it on: how much of a run's longest request the
    server's scheduling could have saved.

    Requests begun from ``a`` to ``b`` that need ``W`` seconds of CPU in all cannot
    all be through before ``a + W / processors``, and the last of them began at
    ``b`` at the latest, so one of them took ``W / processors - (b - a)`` at
    least. The most of that over every such run of requests is the bound; the
    job runs are left out, as a server could have put them all off. One
    interpreter (``kolibri start``) runs Python one thread at a time, so its
    ``processors`` is about 1; a request's time in SQLite's C code runs beside
    it, which ``processors=2`` on a 2-core machine allows for in full. A request
    runs on one processor however many there are, so it takes its own CPU at
    least.

    :return: The bound, or ``None`` when no request began in the window
    :rtype: RequestBound
    """
    requests = sorted(_requests_begun(records, since, until))
    best = None
    # the best first request of a run ending at the current one: the most of
    # (when it began - the CPU of the requests before it / processors)
    best_first = None
    cpu_before = 0.0
    for index, request in enumerate(requests):
        as_first = request.started - cpu_before / processors
        if best_first is None or as_first > best_first[0]:
            best_first = (as_first, index, cpu_before)
        cpu_before += request.cpu
        seconds = best_first[0] + cpu_before / processors - request.started
        if best is None or seconds > best.seconds:
            first = requests[best_first[1]]
            best = RequestBound(
                seconds,
                first.started,
                request.started,
                index - best_first[1] + 1,
                cpu_before - best_first[2],
            )
    if requests:
        costliest = max(requests, key=lambda request: request.cpu)
        if costliest.cpu > best.seconds:
            best = RequestBound(
                costliest.cpu, costliest.started, costliest.started, 1, costliest.cpu
            )
    return best


#: What :func:`slow_requests` found: how many, and their seconds in all: wall,
#: in Kolibri's database (``database``; of it, ``lock`` waiting to begin write
#: transactions, ``reads`` reading and ``autocommit`` writing outside a
#: transaction), in job storage's (``jobs``), and outside both, on their
#: threads' processor (``cpu_outside``) or not (``waiting``: for the
#: interpreter's lock, asleep, or in the plugin's queue of writers, ``queued``).
SlowRequests = collections.namedtuple(
    "SlowRequests",
    (
        "count",
        "wall",
        "database",
        "lock",
        "reads",
        "autocommit",
        "jobs",
        "cpu_outside",
        "waiting",
        "queued",
    ),
    defaults=(0.0,),
)


def slow_requests(records, seconds=1.0, since=None, until=None):
    """
    The requests begun between ``since`` and ``until`` that took over ``seconds``
    inside the server, and where their time went.

    :rtype: SlowRequests
    """
    slow = [r for r in _requests_begun(records, since, until) if r.wall > seconds]
    wall = sum(r.wall for r in slow)
    database = sum(r.database for r in slow)
    jobs = sum(r.jobs for r in slow)
    cpu_outside = sum(max(0.0, r.cpu - r.database_cpu - r.jobs_cpu) for r in slow)
    return SlowRequests(
        len(slow),
        wall,
        database,
        sum(r.lock for r in slow),
        sum(r.reads for r in slow),
        sum(r.autocommit for r in slow),
        jobs,
        cpu_outside,
        max(0.0, wall - database - jobs - cpu_outside),
        sum(r.queued for r in slow),
    )
