"""
One stage job writing at a time on SQLite: a job that finds another writing gives
its worker back and is queued again, backing off while it waits, and runs once the
turn is free; the job that gives the turn back wakes the longest waiting one.
"""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from kolibri.core.auth.models import Classroom
from kolibri.core.tasks.constants import Priority
from kolibri.core.tasks.job import Job
from kolibri.core.tasks.main import job_storage
from kolibri.core.tasks.storage import Storage
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.admin.status import STUCK
from kolibri_sync_extras_plugin.admin.status import report_background_stages
from kolibri_sync_extras_plugin.compat import aware_utc
from kolibri_sync_extras_plugin.compat import run_queued_job_now
from kolibri_sync_extras_plugin.job.small_stage import is_small
from kolibri_sync_extras_plugin.piecewise.support import supports_installed_morango
from kolibri_sync_extras_plugin.request.inline import RECENT_ACTIVITY
from kolibri_sync_extras_plugin.request.poll import check_background_stage
from kolibri_sync_extras_plugin.stage_status import has_run
from kolibri_sync_extras_plugin.stage_status import job_id_for
from kolibri_sync_extras_plugin.stage_status import transfer_session_of_job
from kolibri_sync_extras_plugin.writer_turn import MAX_GIVE_WAY
from kolibri_sync_extras_plugin.writer_turn import MAX_TURN_RETRY_DELAY
from kolibri_sync_extras_plugin.writer_turn import TURN_RETRY_DELAY
from kolibri_sync_extras_plugin.writer_turn import TURN_WAITS_KEY
from kolibri_sync_extras_plugin.writer_turn import side_lane_path
from kolibri_sync_extras_plugin.writer_turn import turn_retry_delay
from kolibri_sync_extras_plugin.writer_turn import waiting_jobs_in_line
from kolibri_sync_extras_plugin.writer_turn import wake_longest_waiting_job
from kolibri_sync_extras_plugin.writer_turn import wake_small_jobs
from kolibri_sync_extras_plugin.writer_turn import writer_turn

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.locks import other_process_holding_lock
from ..helpers.options import sync_options
from ..helpers.sync_sessions import new_server_sync_session

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _stage_status(transfer):
    return TransferSession.objects.get(id=transfer["id"]).transfer_stage_status


@pytest.fixture
def another_stage_writing():
    with writer_turn() as turn:
        assert turn
        yield


def test_writer_turn__taken__second_taker_is_refused(another_stage_writing):
    with writer_turn() as turn:
        assert not turn


def test_writer_turn__released__can_be_taken_again():
    with writer_turn():
        pass

    with writer_turn() as turn:
        assert turn


def test_stage_job__turn_taken__job_queued_again_for_later(
    pull_at_serializing, another_stage_writing
):
    [job] = queued_stage_jobs()

    job.execute()

    orm_job = job_storage.get_orm_job(job.job_id)
    assert orm_job.state == "QUEUED"
    assert aware_utc(orm_job.scheduled_time) > timezone.now()


def test_stage_job__polled_between_giving_its_turn_back_and_requeue__stage_still_started(
    pull_at_serializing, another_stage_writing, monkeypatch
):
    # Kolibri marks a job that asked to be retried completed, then queues it
    # again: a client's poll may come in between
    [job] = queued_stage_jobs()
    storage = Storage
    requeue = storage.reschedule_finished_job_if_needed
    polled = []

    def poll_then_requeue(self, job_id, *args, **kwargs):
        polled.append(check_background_stage(pull_at_serializing["id"]))
        return requeue(self, job_id, *args, **kwargs)

    monkeypatch.setattr(storage, "reschedule_finished_job_if_needed", poll_then_requeue)

    job.execute()

    assert polled == [None]
    assert _stage_status(pull_at_serializing) == transfer_statuses.STARTED


def test_stage_job__turn_taken__stage_still_started(
    pull_at_serializing, another_stage_writing
):
    [job] = queued_stage_jobs()

    job.execute()

    assert _stage_status(pull_at_serializing) == transfer_statuses.STARTED


def test_stage_job__turn_free_again__runs_and_completes_the_stage(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    with writer_turn():
        job.execute()
    # run it now rather than wait for its retry
    update_job_row(job.job_id, scheduled_time=timezone.now())

    job_storage.get_job(job.job_id).execute()

    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert _stage_status(pull_at_serializing) == transfer_statuses.COMPLETED


def test_stage_job__waiting_past_stuck_after__status_reports_it_stuck(
    pull_at_serializing, another_stage_writing
):
    [job] = queued_stage_jobs()
    enqueued = timezone.now() - timedelta(seconds=120)
    update_job_row(job.job_id, scheduled_time=enqueued)
    job.execute()

    [report] = report_background_stages(stuck_after=60)

    assert report.problem == STUCK
    assert report.enqueued_at == enqueued


# Waiting without a busy loop: back-off, priorities, and the hand-over ------------


@pytest.fixture
def new_pull_at_serializing(background_everything, async_client, facility):
    """Make another client's pull whose serializing stage is handed to a queued job."""

    made = []

    def new_pull():
        transfer = async_client.create(new_server_sync_session(facility), push=False)
        async_client.proceed_to(
            transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
        )
        made.append(job_id_for(transfer["id"], transfer_stages.SERIALIZING))
        queued_stage_jobs(expected=len(made))
        return made[-1]

    return new_pull


def _run(job_id):
    """Run the job the way a worker does."""
    job_storage.get_job(job_id).execute()


def _due_now(job_id):
    update_job_row(job_id, scheduled_time=timezone.now())


def _scheduled(job_id):
    return aware_utc(job_storage.get_orm_job(job_id).scheduled_time)


def _priority(job_id):
    return job_storage.get_orm_job(job_id).priority


def _waits(job_id):
    return job_storage.get_job(job_id).extra_metadata.get(TURN_WAITS_KEY) or 0


def _session_of(job_id):
    return transfer_session_of_job(job_storage.get_job(job_id))


def test_poll__turn_freed_without_a_hand_over__wakes_the_longest_waiting_job(
    new_pull_at_serializing,
):
    first, second = new_pull_at_serializing(), new_pull_at_serializing()
    with writer_turn():
        _run(first)
        _run(second)
    # the turn is free, but its holder handed nothing over (its process died)
    assert _scheduled(first) > timezone.now()

    check_background_stage(_session_of(second))

    assert _scheduled(first) <= timezone.now()
    assert _priority(first) == Priority.HIGH
    assert _scheduled(second) > timezone.now()


def test_poll__turn_still_held__wakes_no_waiting_job(
    new_pull_at_serializing, another_stage_writing
):
    first, second = new_pull_at_serializing(), new_pull_at_serializing()
    _run(first)
    _run(second)

    check_background_stage(_session_of(second))

    assert _scheduled(first) > timezone.now()
    assert _scheduled(second) > timezone.now()


def test_client_poll__turn_free__the_polled_stage_job_is_due_now(
    new_pull_at_serializing, async_client
):
    job_id = new_pull_at_serializing()
    with writer_turn():
        _run(job_id)
    assert _scheduled(job_id) > timezone.now()

    polled = async_client.get(_session_of(job_id))

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED
    assert _scheduled(job_id) <= timezone.now()


def test_turn_retry_delay__doubles_per_wait_up_to_the_cap():
    delays = [turn_retry_delay(waits).total_seconds() for waits in range(6)]

    assert delays == [20, 40, 80, 120, 120, 120]
    assert turn_retry_delay(10**6) == MAX_TURN_RETRY_DELAY


def test_stage_job__turn_taken_a_second_time__waits_twice_as_long(
    new_pull_at_serializing, another_stage_writing
):
    job_id = new_pull_at_serializing()
    _run(job_id)
    _due_now(job_id)
    before = timezone.now()

    _run(job_id)

    waited = 2 * TURN_RETRY_DELAY
    assert before + waited <= _scheduled(job_id) <= timezone.now() + waited
    assert job_storage.get_job(job_id).extra_metadata[TURN_WAITS_KEY] == 2


def test_stage_job__longest_waiting__waits_at_high_priority(
    new_pull_at_serializing, another_stage_writing
):
    job_id = new_pull_at_serializing()

    _run(job_id)

    assert _priority(job_id) == Priority.HIGH


def test_stage_job__behind_a_longer_waiting_job__waits_at_regular_priority(
    new_pull_at_serializing, another_stage_writing
):
    first, second = new_pull_at_serializing(), new_pull_at_serializing()
    _run(first)

    _run(second)

    assert _priority(second) == Priority.REGULAR


def test_stage_job__ran_in_its_turn__wakes_the_longest_waiting_job(
    new_pull_at_serializing,
):
    first, second, third = [new_pull_at_serializing() for _ in range(3)]
    with writer_turn():
        # the first waits twice, so it is due after the second
        _run(first)
        _due_now(first)
        _run(first)
        _run(second)
    assert _scheduled(first) > _scheduled(second)

    _run(third)

    assert _scheduled(first) <= timezone.now()
    assert _priority(first) == Priority.HIGH
    assert _scheduled(second) > timezone.now()


def test_stage_run_in_the_request__wakes_the_longest_waiting_job(
    new_pull_at_serializing, async_client, facility
):
    waiting = new_pull_at_serializing()
    with writer_turn():
        # it has waited long enough to back off for the longest delay
        while turn_retry_delay(_waits(waiting)) < MAX_TURN_RETRY_DELAY:
            _due_now(waiting)
            _run(waiting)
        _due_now(waiting)
        _run(waiting)
    assert _scheduled(waiting) > timezone.now() + MAX_TURN_RETRY_DELAY / 2
    # minutes of waiting without moving: its device no longer counts as syncing,
    # which would send the new stage to a job (see request.inline)
    TransferSession.objects.filter(active=True).update(
        last_activity_timestamp=timezone.now() - RECENT_ACTIVITY - timedelta(seconds=1)
    )

    with sync_options(INLINE_STAGE_RECORDS=500):
        transfer = async_client.create(new_server_sync_session(facility), push=False)
        response = async_client.proceed_to(
            transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
        )

    assert response["transfer_stage_status"] == transfer_statuses.COMPLETED
    assert _scheduled(waiting) <= timezone.now()
    assert _priority(waiting) == Priority.HIGH


def test_stage_job__failed_in_its_turn__still_wakes_the_longest_waiting_job(
    new_pull_at_serializing, monkeypatch
):
    from kolibri_sync_extras_plugin.job import run

    first, second = new_pull_at_serializing(), new_pull_at_serializing()
    with writer_turn():
        _run(first)

    def failing_stage(*args, **kwargs):
        raise RuntimeError("the stage failed")

    monkeypatch.setattr(run, "run_stage", failing_stage)

    _run(second)

    assert job_storage.get_orm_job(second).state == "FAILED"
    assert _scheduled(first) <= timezone.now()


def test_stage_job__woken__takes_the_turn_and_completes_its_stage(
    new_pull_at_serializing,
):
    first, second = new_pull_at_serializing(), new_pull_at_serializing()
    with writer_turn():
        _run(first)
    _run(second)

    _run(first)

    assert job_storage.get_orm_job(first).state == "COMPLETED"
    assert has_run(job_storage.get_job(first).result)


def test_wake__no_job_waiting__wakes_none(new_pull_at_serializing):
    # a job never run has not waited for the turn
    new_pull_at_serializing()

    assert wake_longest_waiting_job() is None


def test_run_queued_job_now__job_picked_up_meanwhile__left_alone(
    new_pull_at_serializing, another_stage_writing
):
    job_id = new_pull_at_serializing()
    _run(job_id)
    scheduled = _scheduled(job_id)
    update_job_row(job_id, state="SELECTED")

    assert not run_queued_job_now(job_id, Priority.HIGH)
    assert job_storage.get_orm_job(job_id).state == "SELECTED"
    assert _scheduled(job_id) == scheduled


# A cleanup, which no client waits for, gives the turn to a stage a client polls for


@pytest.fixture
def push_at_cleanup(pushed_and_dequeued, async_client):
    """A push whose deserializing has run and whose cleanup job is queued."""
    run_stage_jobs()
    async_client.close(pushed_and_dequeued["id"])
    [job] = queued_stage_jobs()
    assert job.job_id == job_id_for(pushed_and_dequeued["id"], transfer_stages.CLEANUP)
    return job.job_id


def _waiting_in_line(job_id):
    """Run ``job_id`` while another stage writes, so it waits in line for the turn."""
    with writer_turn():
        _run(job_id)


def _cleanup_completed(pushed):
    session = TransferSession.objects.get(id=pushed["id"])
    return (session.transfer_stage, session.transfer_stage_status) == (
        transfer_stages.CLEANUP,
        transfer_statuses.COMPLETED,
    )


def test_cleanup_job__a_stage_a_client_polls_for_waits__gives_it_the_turn(
    push_at_cleanup, pushed_and_dequeued, new_pull_at_serializing
):
    polled_for = new_pull_at_serializing()
    _waiting_in_line(polled_for)
    assert _scheduled(polled_for) > timezone.now()

    _run(push_at_cleanup)

    assert job_storage.get_orm_job(push_at_cleanup).state == "QUEUED"
    assert _scheduled(push_at_cleanup) > timezone.now()
    assert not _cleanup_completed(pushed_and_dequeued)
    # handed over: the polled-for stage is due now, ahead of Kolibri's regular jobs
    assert _scheduled(polled_for) <= timezone.now()
    assert _priority(polled_for) == Priority.HIGH


def test_cleanup_job__nothing_else_waits__runs(push_at_cleanup, pushed_and_dequeued):
    _run(push_at_cleanup)

    assert job_storage.get_orm_job(push_at_cleanup).state == "COMPLETED"
    assert _cleanup_completed(pushed_and_dequeued)


def test_cleanup_job__gave_way_for_long_enough__runs_before_the_waiting_stage(
    push_at_cleanup, pushed_and_dequeued, new_pull_at_serializing
):
    polled_for = new_pull_at_serializing()
    _waiting_in_line(polled_for)
    long_ago = timezone.now() - MAX_GIVE_WAY - timedelta(seconds=1)
    update_job_row(push_at_cleanup, scheduled_time=long_ago)

    _run(push_at_cleanup)

    assert job_storage.get_orm_job(push_at_cleanup).state == "COMPLETED"
    assert _cleanup_completed(pushed_and_dequeued)


def test_waiting_line__cleanup_queued_first__stage_a_client_polls_for_ahead(
    push_at_cleanup, new_pull_at_serializing
):
    _waiting_in_line(push_at_cleanup)
    polled_for = new_pull_at_serializing()
    _waiting_in_line(polled_for)

    line = [job.job_id for job in waiting_jobs_in_line()]

    assert line == [polled_for, push_at_cleanup]


# Small jobs run beside the turn's holder ------------------------------------------


#: Any threshold: a deserializing or serializing is small only with nothing left
ONE = 1


def test_deserializing_job__nothing_left_but_inline_stages_off__waits_for_the_turn(
    pushed_and_dequeued, another_stage_writing
):
    _applied_by_another_job()
    job = _deserializing_job()

    with sync_options(INLINE_STAGE_RECORDS=0):
        job.execute()

    assert job_storage.get_orm_job(job.job_id).state == "QUEUED"


def _applied_by_another_job():
    """Deserialize everything received, as another push's deserializing job does."""
    from morango.sync.operations import _deserialize_from_store

    _deserialize_from_store("facilitydata")


def _deserializing_job():
    [job] = [j for j in queued_stage_jobs() if j.kwargs["stage"] == "deserializing"]
    return job


def test_deserializing_job__records_left_however_few__waits_for_the_turn(
    pushed_and_dequeued, another_stage_writing
):
    # the filter's records, which another session's job may be deserializing
    job = _deserializing_job()

    with sync_options(INLINE_STAGE_RECORDS=500):
        job.execute()

    assert job_storage.get_orm_job(job.job_id).state == "QUEUED"
    assert _stage_status(pushed_and_dequeued) == transfer_statuses.STARTED


def test_deserializing_job__nothing_left__runs_while_another_job_holds_the_turn(
    pushed_and_dequeued, another_stage_writing
):
    _applied_by_another_job()
    job = _deserializing_job()

    with sync_options(INLINE_STAGE_RECORDS=ONE):
        job.execute()

    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert _stage_status(pushed_and_dequeued) == transfer_statuses.COMPLETED


def test_deserializing_job__nothing_left_but_a_local_change__runs_while_another_job_holds_the_turn(
    pushed_and_dequeued, another_stage_writing
):
    # the pieces serialize nothing first when nothing is left to apply
    if not supports_installed_morango():
        pytest.skip("morango's own receiver serializes first whatever is left")
    _applied_by_another_job()
    Classroom.objects.filter(name="Class A").update(name="Class A, renamed")
    job = _deserializing_job()

    with sync_options(INLINE_STAGE_RECORDS=ONE):
        job.execute()

    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert _stage_status(pushed_and_dequeued) == transfer_statuses.COMPLETED
    assert Classroom.objects.filter(name="Class A, renamed").exists()


def test_dequeuing_job__small_enough_for_a_request__runs_while_another_holds_the_turn(
    pushed_learner_edits, another_stage_writing
):
    [job] = queued_stage_jobs()

    with sync_options(INLINE_STAGE_RECORDS=500):
        job.execute()

    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert _stage_status(pushed_learner_edits) == transfer_statuses.COMPLETED


def test_dequeuing_job__small__waits_in_the_lane_for_the_small_job_beside_the_holder(
    pushed_learner_edits, another_stage_writing
):
    # one small job writes beside the holder at a time, in a server process or
    # another; SQLite's busy handler would let them all ask at once
    [job] = queued_stage_jobs()

    with sync_options(INLINE_STAGE_RECORDS=500), other_process_holding_lock(
        side_lane_path(), 1.5
    ) as released_at:
        job.execute()
        ended_at = time.time()

        assert ended_at > released_at()
    assert job_storage.get_orm_job(job.job_id).state == "COMPLETED"
    assert _stage_status(pushed_learner_edits) == transfer_statuses.COMPLETED


def test_cleanup_job__of_a_push__not_held_up_by_the_small_jobs_lane(
    push_at_cleanup, pushed_and_dequeued, another_stage_writing
):
    # no client waits for it, and most of its time is Kolibri's notifications
    with sync_options(INLINE_STAGE_RECORDS=ONE), other_process_holding_lock(
        side_lane_path(), 3
    ) as released_at:
        _run(push_at_cleanup)
        ended_at = time.time()

        assert ended_at < released_at()
    assert _cleanup_completed(pushed_and_dequeued)


def test_cleanup_job__queued_at_high_priority_as_every_stage_job(push_at_cleanup):
    # at regular priority it would wait behind Kolibri's long tasks filling the
    # regular workers, and a device's unfinished cleanups count against its cap
    assert _priority(push_at_cleanup) == Priority.HIGH


def test_cleanup_job__of_a_push__runs_while_another_job_holds_the_turn(
    push_at_cleanup, pushed_and_dequeued, another_stage_writing
):
    # its facility writes are its session's row; Kolibri's notifications have
    # their own database
    with sync_options(INLINE_STAGE_RECORDS=ONE):
        _run(push_at_cleanup)

    assert job_storage.get_orm_job(push_at_cleanup).state == "COMPLETED"
    assert _cleanup_completed(pushed_and_dequeued)


def _as_a_cleanup_job(job_id):
    """The stage job of ``job_id``'s session, had that session reached its cleanup."""
    job = job_storage.get_job(job_id)
    TransferSession.objects.filter(id=transfer_session_of_job(job)).update(
        transfer_stage=transfer_stages.CLEANUP
    )
    cleanup = Job(
        job.func,
        job_id=job_id_for(transfer_session_of_job(job), transfer_stages.CLEANUP),
        kwargs=dict(job.kwargs, stage=transfer_stages.CLEANUP),
    )
    return cleanup


def test_cleanup_job__of_a_pull__not_small(new_pull_at_serializing):
    # the server produced: its cleanup deletes the buffers it queued
    pulled = new_pull_at_serializing()
    with sync_options(INLINE_STAGE_RECORDS=ONE):
        assert not is_small(_as_a_cleanup_job(pulled))


def test_cleanup_job__of_a_push__small(push_at_cleanup):
    with sync_options(INLINE_STAGE_RECORDS=ONE):
        assert is_small(job_storage.get_job(push_at_cleanup))


def test_cleanup_job__of_a_push_but_inline_stages_off__waits_for_the_turn(
    push_at_cleanup, pushed_and_dequeued, another_stage_writing
):
    with sync_options(INLINE_STAGE_RECORDS=0):
        _run(push_at_cleanup)

    assert job_storage.get_orm_job(push_at_cleanup).state == "QUEUED"
    assert not _cleanup_completed(pushed_and_dequeued)


def test_wake__jobs_with_nothing_left__due_now_a_cleanup_not(
    push_at_cleanup, new_pull_at_serializing
):
    # everything is serialized by the push's deserializing: the pull has nothing left
    serializing = new_pull_at_serializing()
    with writer_turn():
        for job_id in (push_at_cleanup, serializing):
            for _ in range(3):
                _due_now(job_id)
                _run(job_id)

    with sync_options(INLINE_STAGE_RECORDS=ONE):
        woken = wake_small_jobs()

    assert woken == [serializing]
    assert _scheduled(serializing) <= timezone.now()
    assert _priority(serializing) == Priority.HIGH
    assert _scheduled(push_at_cleanup) > timezone.now()
