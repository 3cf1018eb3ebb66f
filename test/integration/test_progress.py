"""
What a background stage reports while it runs: Kolibri job progress that never goes
back, a status text for the task list, and log lines at its start and end.
"""

import logging

import pytest
from django.db import OperationalError
from django.db import transaction
from kolibri.core.auth.models import FacilityUser
from kolibri.core.tasks.storage import Storage
from morango.constants import transfer_stages
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.compat import COUNTS_DESERIALIZED_RECORDS
from kolibri_sync_extras_plugin.job import controller
from kolibri_sync_extras_plugin.job.context import BackgroundSessionContext
from kolibri_sync_extras_plugin.job.progress import StageProgress
from kolibri_sync_extras_plugin.job.progress import transaction_depth
from kolibri_sync_extras_plugin.piecewise.runner import PIECE_COMMITTED
from kolibri_sync_extras_plugin.piecewise.support import supports_installed_morango

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.constants import LEARNERS
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

#: For tests of serializing and deserializing in pieces, which only morango 0.8.15
#: allows.
in_pieces = pytest.mark.skipif(
    not supports_installed_morango(),
    reason="the plugin serializes and deserializes in pieces only with morango 0.8.15",
)


def _fractions(updates):
    return [update["progress"] / update["total"] for update in updates]


@in_pieces
def test_deserializing_progress__pushed_records__saved_after_each_piece_and_never_goes_back(
    pushed_and_dequeued, pieces_of_three, progress_updates
):
    [job] = run_stage_jobs()

    fractions = _fractions(progress_updates)
    assert job.state == "COMPLETED"
    assert fractions == sorted(fractions)
    # the learners counted as each piece of three committed, not only at the end
    assert [u["progress"] for u in progress_updates] == [0, 3, 6, 9, 12]
    assert {u["total"] for u in progress_updates} == {LEARNERS}
    assert FacilityUser.objects.filter(full_name__startswith="Renamed ").count() == (
        LEARNERS
    )


@in_pieces
def test_deserializing_progress__pushed_records__never_saved_inside_a_stage_transaction(
    pushed_and_dequeued, pieces_of_three, monkeypatch
):
    depth_in_test = transaction_depth()
    depths = []
    for method in ("update_job_progress", "save_job_meta"):
        save = getattr(Storage, method)

        def recording(storage, *args, _save=save, **kwargs):
            depths.append(transaction_depth())
            return _save(storage, *args, **kwargs)

        monkeypatch.setattr(Storage, method, recording)

    [job] = run_stage_jobs()

    assert job.state == "COMPLETED"
    assert len(depths) > 5
    assert set(depths) == {depth_in_test}


@in_pieces
def test_deserializing_progress__while_running__status_text_counts_records(
    pushed_and_dequeued, pieces_of_three, progress_updates
):
    [job] = run_stage_jobs()

    texts = [update["text"] for update in progress_updates]
    assert "Deserializing 6 / 12 records for Riverside School" in texts
    assert job.extra_metadata["status_text"] == (
        "Deserializing done for Riverside School: 12 records"
    )
    assert job.extra_metadata["records"] == LEARNERS


@pytest.mark.skipif(
    COUNTS_DESERIALIZED_RECORDS, reason="this morango lets each record be counted"
)
def test_deserializing_progress__records_marked_in_bulk__zero_then_all_at_once(
    pushed_and_dequeued, progress_updates
):
    [job] = run_stage_jobs()

    assert [(u["progress"], u["total"]) for u in progress_updates] == [
        (0, LEARNERS),
        (LEARNERS, LEARNERS),
    ]
    assert progress_updates[0]["text"] == (
        "Deserializing 12 records for Riverside School"
    )
    assert job.extra_metadata["counted_live"] is False
    assert job.extra_metadata["status_text"] == (
        "Deserializing done for Riverside School: 12 records"
    )
    assert FacilityUser.objects.filter(full_name__startswith="Renamed ").count() == (
        LEARNERS
    )


def test_dequeuing_progress__pushed_records__total_known_before_the_merge(
    pushed_learner_edits, progress_updates
):
    [job] = run_stage_jobs()

    assert [(u["progress"], u["total"]) for u in progress_updates] == [
        (0, LEARNERS),
        (LEARNERS, LEARNERS),
    ]
    assert progress_updates[0]["text"] == ("Dequeuing 12 records for Riverside School")
    assert job.extra_metadata["status_text"] == (
        "Dequeuing done for Riverside School: 12 records"
    )


def _pull_at(client, sync_session, stage, client_fsic=EMPTY_FSIC):
    pull = client.create(sync_session, push=False)
    client.proceed_to(pull["id"], transfer_stages.SERIALIZING, client_fsic=client_fsic)
    if stage == transfer_stages.QUEUING:
        run_stage_jobs()
        client.proceed_to(pull["id"], transfer_stages.QUEUING)
    return pull


def test_queuing_progress__pull__one_step_with_the_count_known_at_the_end(
    background_everything, async_client, server_sync_session, progress_updates
):
    _pull_at(async_client, server_sync_session, transfer_stages.QUEUING)
    del progress_updates[:]

    [job] = run_stage_jobs()

    assert [(u["progress"], u["total"]) for u in progress_updates] == [(0, 1), (1, 1)]
    assert progress_updates[0]["text"] == "Queuing for Riverside School"
    assert job.extra_metadata["records"] >= 27
    assert job.extra_metadata["status_text"] == (
        "Queuing done for Riverside School: {} records".format(
            job.extra_metadata["records"]
        )
    )


@in_pieces
def test_serializing_progress__pull__saved_after_each_piece_and_never_goes_back(
    background_everything,
    async_client,
    server_sync_session,
    pieces_of_three,
    progress_updates,
):
    # the suite's facility was created unserialized: every row of it is changed
    _pull_at(async_client, server_sync_session, transfer_stages.SERIALIZING)

    [job] = run_stage_jobs()

    steps = [(u["progress"], u["total"]) for u in progress_updates]
    total = job.extra_metadata["records"]
    assert total >= 27
    assert steps[0] == (0, total) and steps[-1] == (total, total)
    assert len(steps) > total // 3
    assert [p for p, _ in steps] == sorted(p for p, _ in steps)
    assert "Serializing 6 / {} records for Riverside School".format(total) in [
        u["text"] for u in progress_updates
    ]
    assert job.extra_metadata["status_text"] == (
        "Serializing done for Riverside School: {} records".format(total)
    )


def test_serializing_progress__unsupported_morango__zero_then_all_at_once(
    background_everything,
    async_client,
    server_sync_session,
    progress_updates,
    monkeypatch,
):
    import morango

    monkeypatch.setattr(morango, "__version__", "0.0.0")
    _pull_at(async_client, server_sync_session, transfer_stages.SERIALIZING)

    [job] = run_stage_jobs()

    total = job.extra_metadata["records"]
    assert [(u["progress"], u["total"]) for u in progress_updates] == [
        (0, total),
        (total, total),
    ]
    assert job.extra_metadata["status_text"] == (
        "Serializing done for Riverside School: {} records".format(total)
    )


def test_serializing_progress__push__one_step_without_a_count(
    pushed_learner_edits, async_client, progress_updates
):
    # the server of a push serializes nothing: the stage is one step

    context = BackgroundSessionContext(
        TransferSession.objects.get(id=pushed_learner_edits["id"])
    )
    progress = StageProgress(transfer_stages.SERIALIZING)

    assert progress.start(context) is None
    assert progress.total == 1


def test_stage_progress__queued_job__status_text_waits_for_a_worker(
    background_everything, async_client, server_sync_session
):
    _pull_at(async_client, server_sync_session, transfer_stages.SERIALIZING)

    [job] = queued_stage_jobs()

    assert job.extra_metadata["status_text"] == (
        "Serializing for Riverside School: waiting for a worker"
    )
    assert job.status("en").text == job.extra_metadata["status_text"]


def test_stage_progress__stage_raises__status_text_names_the_error(
    background_everything, async_client, server_sync_session
):
    # a client_fsic that is not JSON makes morango's queuing raise in the job
    _pull_at(
        async_client,
        server_sync_session,
        transfer_stages.QUEUING,
        client_fsic="not json",
    )

    [job] = run_stage_jobs()

    assert job.state == "FAILED"
    assert job.extra_metadata["error"].startswith("JSONDecodeError: ")
    assert job.extra_metadata["status_text"].startswith(
        "Queuing failed for Riverside School: JSONDecodeError: "
    )
    assert job.status("en").text == job.extra_metadata["status_text"]


class _RolledBack(Exception):
    pass


class _RollsBackFirstPassAfter:
    """
    A stage whose first pass gets through more than ``records`` Store records,
    then meets a busy database: its work is rolled back and the job runs the stage
    again, as when another writer holds SQLite's lock. Counts the records the
    deserializing pieces of each pass apply.
    """

    def __init__(self, middleware, records):
        self.middleware = middleware
        self.records = records
        self.passes = 0
        self.saved = 0

    def count_applied(self, sender, records=0, **kwargs):
        if sender == transfer_stages.DESERIALIZING:
            self.saved += records
            if self.passes == 1 and self.saved > self.records:
                raise _RolledBack()

    def __call__(self, context):
        self.passes += 1
        self.saved = 0
        if self.passes > 1:
            return self.middleware(context)
        try:
            with transaction.atomic():
                self.middleware(context)
        except _RolledBack:
            pass
        raise OperationalError("database is locked")


@pytest.fixture
def first_pass_rolled_back_after_6_records(monkeypatch):
    stage_middleware = controller.stage_middleware
    middleware = _RollsBackFirstPassAfter(
        stage_middleware(transfer_stages.DESERIALIZING), records=6
    )
    monkeypatch.setattr(controller, "stage_middleware", lambda stage: middleware)
    monkeypatch.setattr(controller, "_RETRY_DELAY_SECONDS", 0.01)
    # connected ahead of the stage's own counter, so it has counted each piece
    # by the time the stage reports it
    PIECE_COMMITTED.connect(middleware.count_applied, weak=False)
    yield middleware
    PIECE_COMMITTED.disconnect(middleware.count_applied)


@in_pieces
def test_deserializing_progress__stage_starts_over__shows_nothing_rolled_back(
    pushed_and_dequeued,
    pieces_of_three,
    first_pass_rolled_back_after_6_records,
    monkeypatch,
):
    rolled_back = first_pass_rolled_back_after_6_records
    seen = []
    save = Storage.update_job_progress

    def recording(storage, job_id, progress, total, extra_metadata=None):
        seen.append((rolled_back.passes, rolled_back.saved, progress))
        return save(storage, job_id, progress, total, extra_metadata)

    monkeypatch.setattr(Storage, "update_job_progress", recording)

    [job] = run_stage_jobs()

    assert rolled_back.passes == 2
    assert job.state == "COMPLETED"
    first = [progress for run, _, progress in seen if run < 2]
    second = [(saved, progress) for run, saved, progress in seen if run == 2]
    # the first pass's pieces were rolled back with it before anything was saved
    assert first == [0]
    # the second pass shows each of its pieces as it commits
    assert second == [(3, 3), (6, 6), (9, 9), (12, 12)]
    assert job.extra_metadata["records"] == LEARNERS
    assert FacilityUser.objects.filter(full_name__startswith="Renamed ").count() == (
        LEARNERS
    )


def test_deserializing_progress__job_storage_refuses_progress__stage_still_completes(
    pushed_and_dequeued, monkeypatch, caplog
):
    def busy(storage, job_id, progress, total_progress, extra_metadata=None):
        raise OperationalError("database is locked")

    monkeypatch.setattr(Storage, "update_job_progress", busy)

    [job] = run_stage_jobs()

    assert job.state == "COMPLETED"
    assert FacilityUser.objects.filter(full_name__startswith="Renamed ").count() == (
        LEARNERS
    )
    assert any(
        record.getMessage().startswith("Could not save the progress of job ")
        for record in caplog.records
    )


def _log_lines(caplog, level):
    return [
        record
        for record in caplog.records
        if record.name == "kolibri_sync_extras_plugin.job.run"
        and record.levelno == level
    ]


def test_stage_logs__stage_completes__start_and_end_name_session_stage_and_records(
    pushed_learner_edits, caplog
):
    caplog.set_level(logging.INFO, logger="kolibri_sync_extras_plugin")

    run_stage_jobs()

    started, completed = [r.getMessage() for r in _log_lines(caplog, logging.INFO)]
    assert started == (
        "Stage dequeuing of transfer session {} started in the background "
        "(records: 12)".format(pushed_learner_edits["id"])
    )
    assert completed.startswith(
        "Stage dequeuing of transfer session {} completed in the background in ".format(
            pushed_learner_edits["id"]
        )
    )
    assert completed.endswith("s (records: 12)")


def test_stage_logs__stage_raises__error_with_traceback(
    background_everything, async_client, server_sync_session, caplog
):
    pull = _pull_at(
        async_client,
        server_sync_session,
        transfer_stages.QUEUING,
        client_fsic="not json",
    )
    caplog.set_level(logging.INFO, logger="kolibri_sync_extras_plugin")

    run_stage_jobs()

    [error] = _log_lines(caplog, logging.ERROR)
    assert error.getMessage().startswith(
        "Background stage queuing of transfer session {} failed after ".format(
            pull["id"]
        )
    )
    assert error.exc_info is not None
