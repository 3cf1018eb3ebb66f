"""
What a run in pieces reports of itself: the time its pieces waited to begin their
transactions (another writer's), apart from the time they worked.
"""

import contextlib
import logging
import time

import pytest

from kolibri_sync_extras_plugin.piecewise import runner
from kolibri_sync_extras_plugin.piecewise.runner import PieceRun

from ..helpers.constants import ALL_DATABASES
from ..helpers.pieces import only_where_pieces_mirror_morango

pytestmark = [
    pytest.mark.django_db(databases=ALL_DATABASES),
    only_where_pieces_mirror_morango,
]

#: How long another writer keeps the piece from beginning
OTHER_WRITER_SECONDS = 0.2
#: How long the piece's own work takes, once begun
WORK_SECONDS = 1.0
#: The processor time the piece's own work spends, in the closing line's test
BUSY_SECONDS = 0.3


def _busy(seconds):
    """Spend ``seconds`` of this thread's processor time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.fixture
def another_writer_first(monkeypatch):
    """Each piece's transaction begins only once another writer's has ended."""
    begin = runner._begin_transaction

    @contextlib.contextmanager
    def after_another_writer(*args, **kwargs):
        # as SQLite's BEGIN IMMEDIATE waits while another connection writes
        time.sleep(OTHER_WRITER_SECONDS)
        with begin(*args, **kwargs):
            yield

    monkeypatch.setattr(runner, "_begin_transaction", after_another_writer)


def test_piece_run__piece_kept_waiting__counts_the_wait_apart_from_its_work(
    another_writer_first,
):
    run = PieceRun("facilitydata", None, on_piece=None, pause=False)

    run.commit_piece(lambda: time.sleep(WORK_SECONDS), 1, "FacilityUser")

    assert OTHER_WRITER_SECONDS <= run.lock_waited < WORK_SECONDS
    assert run.longest >= OTHER_WRITER_SECONDS + WORK_SECONDS


def test_piece_run__closing_line__gives_the_wait_and_the_cpu(
    another_writer_first, caplog
):
    run = PieceRun("facilitydata", None, on_piece=None, pause=False)
    run.commit_piece(lambda: _busy(BUSY_SECONDS), 1, "FacilityUser")

    # a run in a request logs its line at DEBUG, a job's at INFO
    with caplog.at_level(logging.DEBUG, logger=runner.__name__):
        run.log_end("Deserialized")

    (line,) = [r.getMessage() for r in caplog.records if r.name == runner.__name__]
    waited = float(line.split("s waiting for them")[0].rsplit("; ", 1)[1])
    assert waited >= OTHER_WRITER_SECONDS
    assert line.endswith("s of CPU")
    cpu = float(line[: -len("s of CPU")].rsplit("; ", 1)[1])
    # the thread's own processor time: its work, not the wait for the other writer
    assert BUSY_SECONDS <= cpu < BUSY_SECONDS + OTHER_WRITER_SECONDS
