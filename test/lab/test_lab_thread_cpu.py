"""
With ``--time-server-threads`` the server's processes time each request and job
run by its thread's CPU, and the report gives the push phase's by kind.
"""

import importlib
import os
import sqlite3
import subprocess
import textwrap
import threading
import time
from collections import namedtuple
from types import SimpleNamespace

import pytest

from sync_lab.bench import demo
from sync_lab.bench.many_clients import request_bound_line
from sync_lab.bench.many_clients import slow_requests_line
from sync_lab.bench.many_clients import thread_cpu_lines
from sync_lab.bench.many_clients import turn_hold_lines
from sync_lab.harness import thread_cpu
from sync_lab.harness.instances import KolibriInstance
from sync_lab.harness.thread_cpu import DIR_ENV
from sync_lab.harness.thread_cpu import SITE_DIR
from sync_lab.harness.thread_cpu import STATEMENT_METHODS
from sync_lab.harness.thread_cpu import Record
from sync_lab.harness.thread_cpu import job_kind
from sync_lab.harness.thread_cpu import least_longest_request
from sync_lab.harness.thread_cpu import read_records
from sync_lab.harness.thread_cpu import request_kind
from sync_lab.harness.thread_cpu import slow_requests
from sync_lab.harness.thread_cpu import summarize

SESSION_ID = "0123456789abcdef0123456789abcdef"
LOCK_SECONDS = 0.05


def test_instance_env__timing_on__loads_the_timing_in_its_processes(tmp_path):
    instance = KolibriInstance("server", root=tmp_path)
    instance.thread_cpu_dir = tmp_path / "thread-cpu"

    env = instance.env()

    assert env["PYTHONPATH"].split(":")[0] == str(SITE_DIR)
    assert env[DIR_ENV] == str(tmp_path / "thread-cpu")
    assert (tmp_path / "thread-cpu").is_dir()


def test_instance_env__timing_off__nothing_added(tmp_path):
    env = KolibriInstance("client", root=tmp_path).env()

    assert str(SITE_DIR) not in env["PYTHONPATH"]
    assert DIR_ENV not in env


#: In the timed request: the processor time it spends, and how long it sleeps
BUSY_SECONDS = 0.1
SLEEP_SECONDS = 0.3


def test_server_process__a_request__recorded_with_its_thread_cpu(tmp_path):
    """A process started with a timed instance's environment records each request
    (its ``request_started`` receivers included, even when it then fails) with the
    processor time of its thread, not its wall time."""
    instance = KolibriInstance("server", root=tmp_path)
    instance.thread_cpu_dir = tmp_path / "thread-cpu"
    script = textwrap.dedent(
        """
        import time
        from kolibri.utils.env import set_env
        set_env()
        from django.conf import settings
        settings.configure()
        from django.core.handlers.wsgi import WSGIHandler
        from django.core.signals import request_started

        def busy_then_asleep(**kwargs):
            end = time.thread_time() + {busy}
            while time.thread_time() < end:
                pass
            time.sleep({sleep})

        request_started.connect(busy_then_asleep)

        class NoRequestClass:
            request_class = None

        environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/api/x/{session}/"}}
        try:
            # the request object cannot be made: the handler fails after the signal
            WSGIHandler.__call__(NoRequestClass(), environ, None)
        except TypeError:
            pass
        """
    ).format(busy=BUSY_SECONDS, sleep=SLEEP_SECONDS, session=SESSION_ID)

    subprocess.run(
        [instance.python, "-c", script], env=instance.env(), check=True, timeout=120
    )

    [record] = read_records(tmp_path / "thread-cpu")
    assert record.kind == "GET /api/x/<id>/"
    assert BUSY_SECONDS <= record.cpu < BUSY_SECONDS + SLEEP_SECONDS
    assert record.wall >= BUSY_SECONDS + SLEEP_SECONDS


def test_server_process__forked_worker__records_into_a_file_of_its_own(tmp_path):
    """uwsgi forks its workers from a process that has loaded the timing."""
    instance = KolibriInstance("server", root=tmp_path)
    instance.thread_cpu_dir = tmp_path / "thread-cpu"
    script = textwrap.dedent(
        """
        import os, sys
        from kolibri.utils.env import set_env
        set_env()
        from django.core.handlers.wsgi import WSGIHandler
        child = os.fork()
        path = "/child/" if child == 0 else "/parent/"
        try:
            WSGIHandler.__call__(object(), {"REQUEST_METHOD": "GET", "PATH_INFO": path}, None)
        except Exception:
            pass
        if child:
            os.waitpid(child, 0)
        sys.exit(0)
        """
    )

    subprocess.run(
        [instance.python, "-c", script], env=instance.env(), check=True, timeout=120
    )

    files = sorted((tmp_path / "thread-cpu").glob("thread-cpu-*.tsv"))
    assert len(files) == 2
    assert sorted(r.kind for r in read_records(tmp_path / "thread-cpu")) == [
        "GET /child/",
        "GET /parent/",
    ]


def test_request_kind__ids_left_out():
    environ = {
        "REQUEST_METHOD": "PATCH",
        "PATH_INFO": "/api/morango/v1/transfersessions/{}/".format(SESSION_ID),
    }

    assert request_kind(environ) == "PATCH /api/morango/v1/transfersessions/<id>/"


def test_job_kind__names_the_task_and_its_stage():
    FakeJob = namedtuple("FakeJob", ("func", "kwargs"))

    stage_job = FakeJob(
        "kolibri_sync_extras_plugin.tasks.run_background_stage",
        {"stage": "deserializing"},
    )
    other_job = FakeJob("kolibri.core.auth.tasks.cleanupsync", {})

    assert job_kind(stage_job) == "job run_background_stage deserializing"
    assert job_kind(other_job) == "job cleanupsync"


def test_summarize__by_kind_within_the_phase__most_cpu_first():
    records = [
        Record(9.0, "GET poll", 5.0, 5.0),  # before the phase
        Record(10.0, "GET poll", 0.002, 0.01),
        Record(11.0, "job deserializing", 1.5, 3.0),
        Record(12.0, "GET poll", 0.003, 0.02),
        Record(21.0, "job deserializing", 9.0, 9.0),  # after it
    ]

    rows = summarize(records, since=10.0, until=20.0)

    assert rows[0] == ("job deserializing", 1, 1.5, 3.0)
    assert rows[1][:2] == ("GET poll", 2)
    assert rows[1][2] == pytest.approx(0.005)


def test_thread_cpu_lines__total_each_kind_and_the_rest():
    rows = [("job a", 2, 4.0, 5.0), ("GET b", 100, 0.2, 1.0), ("GET c", 1, 0.1, 0.1)]

    lines = thread_cpu_lines(rows, process_cpu=6.0, top=2)

    assert lines[0].endswith("4.3 s in all; the server's processes 6.0 s")
    assert "2 x" in lines[1] and "2000.0 ms each" in lines[1] and "job a" in lines[1]
    assert "GET b" in lines[2]
    assert lines[3].strip() == "0.10 s  the other 1 kinds"


def test_least_longest_request__a_burst_needs_more_cpu_than_its_span__the_excess():
    # ten uploads of 0.2 s of CPU begun within 0.9 s: whichever order they are
    # served in, the last of them ends 2 s after the first began at the soonest,
    # and it began 0.9 s after it
    burst = [Record(10.0 + 0.1 * n, "POST buffers", 0.2, 1.0) for n in range(10)]
    quiet = [Record(20.0 + n, "GET poll", 0.01, 0.01) for n in range(5)]

    bound = least_longest_request(quiet + burst)

    assert bound.seconds == pytest.approx(2.0 - 0.9)
    assert (bound.first, bound.last) == (10.0, pytest.approx(10.9))
    assert bound.requests == 10
    assert bound.cpu == pytest.approx(2.0)


def test_least_longest_request__two_processors__half_the_cpu_counts():
    burst = [Record(10.0 + 0.05 * n, "POST buffers", 0.2, 1.0) for n in range(20)]

    bound = least_longest_request(burst, processors=2)

    assert bound.seconds == pytest.approx(4.0 / 2 - 0.95)


def test_least_longest_request__one_costly_request__its_own_cpu_on_any_processors():
    records = [Record(10.0, "PATCH deserializing", 6.0, 6.0)]

    assert least_longest_request(records, processors=2).seconds == 6.0


def test_least_longest_request__requests_spread_out__their_own_cpu_at_most():
    spread = [Record(10.0 + n, "POST buffers", 0.3, 0.3) for n in range(5)]

    assert least_longest_request(spread).seconds == pytest.approx(0.3)


def test_least_longest_request__job_runs_and_requests_outside_the_window_left_out():
    records = [
        Record(5.0, "POST buffers", 9.0, 9.0),  # before the phase
        Record(10.0, "job run_background_stage deserializing", 30.0, 30.0),
        Record(11.0, "PATCH transfersessions", 0.02, 0.02),
        Record(11.5, "POST buffers", 0.05, 0.05),
    ]

    bound = least_longest_request(records, since=10.0, until=20.0)

    assert bound.seconds == pytest.approx(0.05)
    assert least_longest_request(records, since=30.0) is None


def test_request_bound_line__each_processor_count_with_the_requests_behind_it():
    burst = [Record(10.0 + 0.05 * n, "POST buffers", 0.2, 1.0) for n in range(20)]
    bounds = {n: least_longest_request(burst, processors=n) for n in (1, 2)}

    line = request_bound_line(bounds)

    assert (
        "3.05 s on one processor (20 requests begun within 0.95 s, 4.00 s of CPU)"
        in line
    )
    assert "1.05 s on 2 processors" in line


class _Lines:
    """A recorder that keeps what it is given."""

    def __init__(self):
        self.added = []

    def add(self, *record):
        self.added.append(Record(*record))


def test_timed_request__its_statements__counted_by_kind():
    recorder = _Lines()
    begin = thread_cpu._timed_statement("begin", lambda: time.sleep(LOCK_SECONDS))
    database = thread_cpu._timed_statement(
        "database",
        lambda cursor, query: begin() if query == "BEGIN" else time.sleep(LOCK_SECONDS),
    )
    job_storage = thread_cpu._timed_statement("jobs", lambda: time.sleep(LOCK_SECONDS))

    def serve(environ):
        database(None, "BEGIN")
        database(None, "  select 1")
        database(None, "INSERT INTO x VALUES (1)")
        job_storage()

    thread_cpu._timed(recorder, serve, thread_cpu.request_kind)({"PATH_INFO": "/x/"})
    thread_cpu._timed(recorder, lambda environ: None, thread_cpu.request_kind)({})

    first, second = recorder.added
    assert LOCK_SECONDS <= first.lock < 2 * LOCK_SECONDS
    assert LOCK_SECONDS <= first.reads < 2 * LOCK_SECONDS
    assert 3 * LOCK_SECONDS <= first.database
    assert LOCK_SECONDS <= first.jobs
    assert first.database + first.jobs <= first.wall
    # asleep, off the processor
    assert first.database_cpu < LOCK_SECONDS
    assert second[4:] == (0.0,) * 8


def test_database_statements__slow_ones_written_with_whether_in_a_transaction(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(thread_cpu, "SLOW_STATEMENT_SECONDS", -1)  # every one
    recorder = thread_cpu._Recorder(tmp_path)
    execute = thread_cpu._timed_statement("database", sqlite3.Cursor.execute, recorder)
    cursor = sqlite3.connect(":memory:", isolation_level=None).cursor()

    for sql in (
        "CREATE TABLE x (a)",
        "BEGIN IMMEDIATE",
        "INSERT INTO x VALUES (1)",
        "COMMIT",
        "UPDATE x SET a = 2",
        "SELECT a FROM x",
    ):
        execute(cursor, sql)
    recorder.flush()

    lines = (tmp_path / "slow-statements-{}.tsv".format(os.getpid())).read_text()
    assert [line.split("\t")[2:] for line in lines.splitlines()] == [
        ["autocommit", "CREATE TABLE x (a)"],
        ["autocommit", "BEGIN IMMEDIATE"],
        ["transaction", "INSERT INTO x VALUES (1)"],
        ["transaction", "COMMIT"],
        ["autocommit", "UPDATE x SET a = 2"],
        ["autocommit", "SELECT a FROM x"],
    ]


def test_timed_request__writes_outside_a_transaction__counted_apart():
    recorder = _Lines()
    execute = thread_cpu._timed_statement("database", sqlite3.Cursor.execute)
    cursor = sqlite3.connect(":memory:", isolation_level=None).cursor()
    cursor.execute("CREATE TABLE x (a)")

    def serve(environ):
        execute(cursor, "BEGIN IMMEDIATE")
        execute(cursor, "INSERT INTO x VALUES (1)")
        execute(cursor, "COMMIT")

    thread_cpu._timed(recorder, serve, thread_cpu.request_kind)({})
    thread_cpu._timed(
        recorder,
        lambda environ: execute(cursor, "DELETE FROM x"),
        thread_cpu.request_kind,
    )({})

    in_a_transaction, outside = recorder.added
    assert in_a_transaction.autocommit == 0.0
    assert 0.0 < outside.autocommit <= outside.database


def test_statement_timing__wraps_what_kolibri_s_server_runs_its_statements_with():
    for module_name, (class_name, kind, names) in STATEMENT_METHODS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            # before 0.19 Kolibri begins its transactions as Django does
            assert module_name == thread_cpu.BEGIN_MODULE
            continue
        cls = getattr(module, class_name)

        assert kind in thread_cpu.STATEMENT_KINDS
        assert all(callable(getattr(cls, name)) for name in names)


def test_read_records__lines_of_older_runs__read_as_no_statements(tmp_path):
    (tmp_path / "thread-cpu-1.tsv").write_text(
        "10.0\tGET /x/\t0.1\t0.2\n"
        "11.0\tGET /y/\t0.1\t0.5\t0.3\t0.4\t0.05\t0.01\t0.001\t0.02\t0.03\n"
    )

    old, new = read_records(tmp_path)

    assert old[4:] == (0.0,) * 8
    assert new[4:] == (0.3, 0.4, 0.05, 0.01, 0.001, 0.02, 0.03, 0.0)


def test_slow_requests_line__where_their_time_went():
    records = [
        # cpu, wall; begin, database, its cpu; job storage, its cpu; reads,
        # autocommit; queued for a turn
        Record(10.0, "POST buffers", 0.3, 2.0, 0.5, 1.0, 0.1, 0.0, 0.0, 0.4, 0.1, 0.2),
        Record(11.0, "PATCH sessions", 0.1, 2.0, 0.0, 0.0, 0.0, 0.5, 0.1, 0.0, 0.0),
        Record(12.0, "GET poll", 0.01, 0.5),  # not over a second
        Record(13.0, "job run_background_stage deserializing", 5.0, 9.0),
    ]

    line = slow_requests_line(slow_requests(records))

    assert line.endswith(
        "2, 4.0 s in all: 25% in Kolibri's database (12% waiting to begin write "
        "transactions, 10% reading, 2% writing outside a transaction), 12% in job "
        "storage's, 5% outside both on the processor, "
        "57% outside both waiting (5% in the queue of writers, the rest for the "
        "interpreter's lock or in sleeps)"
    )
    assert slow_requests_line(slow_requests(records[2:])).endswith(": none")


def test_parse_args__time_server_threads_only_with_clients():
    assert demo.parse_args(
        ["--clients", "4", "--time-server-threads"]
    ).time_server_threads
    assert not demo.parse_args(["--clients", "4"]).time_server_threads
    with pytest.raises(SystemExit):
        demo.parse_args(["--time-server-threads"])


class _Holds(_Lines):
    """A recorder that also keeps the turns held."""

    def __init__(self):
        super().__init__()
        self.holds = []

    def add_hold(self, *hold):
        self.holds.append(hold)


def _timed_turn(recorder):
    """A queue of writers of its own, timed as the server's is."""
    from kolibri_sync_extras_plugin.write_queue import FairTurn

    module = SimpleNamespace(FairTurn=type("TimedTurn", (FairTurn,), {}))
    thread_cpu._wrap_turn(module, recorder)
    return module.FairTurn()


def test_turn_timing__a_request_waits_then_holds__both_recorded():
    """A request that waits for another writer's turn: its wait counts as
    ``queued`` in its record, and its own hold is written with its kind, its
    wait, how long it held the turn and the first statements it ran."""
    recorder = _Holds()
    turn = _timed_turn(recorder)
    database = thread_cpu._timed_statement(
        "database", lambda cursor, query: time.sleep(LOCK_SECONDS), recorder
    )

    def hold_a_while():
        turn.acquire(timeout=5)
        time.sleep(2 * LOCK_SECONDS)
        turn.release()

    other_writer = threading.Thread(target=hold_a_while)
    other_writer.start()
    while not turn.held:
        time.sleep(0.001)

    def serve(environ):
        turn.acquire(timeout=5)
        for number in range(1, 5):
            database(None, "UPDATE t SET n = {}".format(number))
        turn.release()

    thread_cpu._timed(recorder, serve, thread_cpu.request_kind)(
        {"REQUEST_METHOD": "PATCH", "PATH_INFO": "/x/"}
    )
    other_writer.join()

    (request,) = recorder.added
    assert 2 * LOCK_SECONDS <= request.queued < request.wall
    # the other writer's, outside any request, and the request's
    outside, (started, kind, waited, held, cpu, statements) = recorder.holds
    assert outside[1] == "outside requests and jobs"
    assert kind == "PATCH /x/"
    assert waited == pytest.approx(request.queued, abs=0.01)
    assert 4 * LOCK_SECONDS <= held < request.wall
    assert cpu < held
    assert statements == ["UPDATE t SET n = {}".format(n) for n in (1, 2, 3)]


def test_read_holds__summarized_by_kind__most_held_first(tmp_path):
    (tmp_path / "turn-holds-1.tsv").write_text(
        "10.0\tjob cleanup\t0.01\t0.002\t0.001\tBEGIN IMMEDIATE\n"
        "10.5\tPOST buffers\t0.2\t0.05\t0.04\tBEGIN IMMEDIATE | INSERT\n"
        "11.0\tjob cleanup\t0.0\t0.004\t0.001\tBEGIN IMMEDIATE\n"
        "99.0\tPOST buffers\t0.0\t9.0\t0.04\tlater, outside the phase\n"
    )

    holds = thread_cpu.read_holds(tmp_path)
    rows = thread_cpu.summarize_holds(holds, since=10.0, until=20.0)

    assert holds[1].statements == "BEGIN IMMEDIATE | INSERT"
    assert rows == [
        ("POST buffers", 1, 0.05, 0.04, 0.05),
        ("job cleanup", 2, pytest.approx(0.006), 0.002, 0.004),
    ]
    lines = turn_hold_lines(rows, sorted(holds, key=lambda h: -h.held)[:1])
    assert lines[0] == (
        "push phase, the write turn held (queue of writers): 0.1 s in all, 3 turns"
    )
    assert lines[1].endswith("longest  0.05 s  POST buffers")
    assert lines[-1] == (
        "   9.00 s held ( 0.04 s on the processor) after  0.00 s waiting  POST buffers"
    )
