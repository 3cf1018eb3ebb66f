"""The lab's write-lock probe: it sees a transaction that holds SQLite's lock."""

import sqlite3
import threading
import time

from sync_lab.bench.write_lock import LockWait
from sync_lab.bench.write_lock import WriteLockProbe
from sync_lab.bench.write_lock import background_stage_spans
from sync_lab.bench.write_lock import describe_wait
from sync_lab.harness.proxy import Exchange

HELD_SECONDS = 0.6


def _hold_write_lock(path, seconds, began):
    connection = sqlite3.connect(str(path), isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    began.set()
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def test_write_lock_probe__a_held_lock__is_the_longest_wait(tmp_path):
    database = tmp_path / "db.sqlite3"
    sqlite3.connect(str(database)).execute("CREATE TABLE t (x)").connection.close()
    began = threading.Event()
    with WriteLockProbe(database) as probe:
        time.sleep(0.2)
        holder = threading.Thread(
            target=_hold_write_lock, args=(database, HELD_SECONDS, began)
        )
        holder.start()
        began.wait(5)
        holder.join()
        time.sleep(0.2)
    assert probe.error is None
    assert len(probe.waits) > 3
    # the probe asked at most one interval after the lock was taken
    assert probe.longest()[0].seconds > HELD_SECONDS - 0.15
    assert probe.over(HELD_SECONDS - 0.15) == 1


def test_write_lock_probe__a_free_lock__never_waits_long(tmp_path):
    database = tmp_path / "db.sqlite3"
    sqlite3.connect(str(database)).execute("CREATE TABLE t (x)").connection.close()
    with WriteLockProbe(database) as probe:
        time.sleep(0.3)
    assert probe.waits and probe.over(0.1) == 0


SERVER_LOG = """\
INFO 2026-01-02 10:00:00,000 kolibri_sync_extras_plugin.request_boundary Stage cleanup of transfer session aa will run in background job 11
INFO 2026-01-02 10:00:01,000 kolibri_sync_extras_plugin.tasks Stage cleanup of transfer session aa started in the background (records: unknown)
INFO 2026-01-02 10:00:03,500 kolibri_sync_extras_plugin.tasks Stage cleanup of transfer session aa completed in the background in 2.50s (records: unknown)
INFO 2026-01-02 10:00:04,000 kolibri_sync_extras_plugin.tasks Stage deserializing of transfer session bb started in the background (records: 12)
"""


def test_background_stage_spans__read_from_the_plugins_log_lines(tmp_path):
    log = tmp_path / "kolibri.txt"
    log.write_text(SERVER_LOG)
    spans = sorted(background_stage_spans(log))
    assert [(stage, session) for stage, session, _, _ in spans] == [
        ("cleanup", "aa"),
        ("deserializing", "bb"),
    ]
    cleanup, deserializing = spans
    assert cleanup[3] - cleanup[2] == 2.5
    assert deserializing[3] is None


def test_describe_wait__names_the_jobs_and_requests_running_then(tmp_path):
    log = tmp_path / "kolibri.txt"
    log.write_text(SERVER_LOG)
    spans = background_stage_spans(log)
    cleanup_started = next(s[2] for s in spans if s[0] == "cleanup")
    during = Exchange("POST", "/api/morango/v1/buffers/", cleanup_started + 0.5)
    during.duration = 1.0
    after = Exchange("GET", "/api/morango/v1/buffers/", cleanup_started + 5)
    after.duration = 0.1
    wait = LockWait(cleanup_started + 1.0, 0.4)
    assert describe_wait(wait, spans, [during, after]) == "cleanup job, POST buffers"
