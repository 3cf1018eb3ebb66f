"""
``kolibri manage sync_extras_status`` lists the background stages from job storage
and the transfer sessions, and exits non-zero when one is stuck or errored.
"""

import datetime
import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from kolibri.core.tasks.main import job_storage
from kolibri.core.tasks.storage import Storage
from morango.constants import transfer_stages
from morango.models.core import SyncSession
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.compat import COUNTS_DESERIALIZED_RECORDS
from kolibri_sync_extras_plugin.request.poll import MISSING_JOB_GRACE_SECONDS

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.job_rows import delete_job_rows
from ..helpers.job_rows import update_job_row
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.worker_processes import ended_process_identity
from ..helpers.worker_processes import live_identity
from ..helpers.worker_processes import mark_running_in

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

COMMAND = "sync_extras_status"


def status(*args):
    """
    Run the command as ``kolibri manage`` would.

    :return: ``(exit status, stdout)``; Django's command runner exits with a
        ``CommandError``'s ``returncode``
    """
    out = io.StringIO()
    try:
        call_command(COMMAND, *args, stdout=out)
    except CommandError as e:
        return e.returncode, out.getvalue()
    return 0, out.getvalue()


def status_json(*args):
    code, out = status("--json", *args)
    return code, json.loads(out)


def _backdate_job(job_id, seconds):
    update_job_row(
        job_id, scheduled_time=timezone.now() - datetime.timedelta(seconds=seconds)
    )


def _backdate_stage(transfer_session_id, seconds):
    TransferSession.objects.filter(id=transfer_session_id).update(
        last_activity_timestamp=timezone.now() - datetime.timedelta(seconds=seconds)
    )


def _another_client(sync_session):
    """A sync session like ``sync_session``, for a second client syncing at once."""
    other = SyncSession.objects.get(id=sync_session.id)
    other.id = uuid.uuid4().hex
    other.client_instance_id = uuid.uuid4()
    other.save(force_insert=True)
    return other


def _only_stage(report):
    [stage] = report["stages"]
    return stage


def test_status__nothing_in_the_background__says_so_and_exits_zero():
    code, out = status()

    assert code == 0
    assert out.strip() == "0 background stages: 0 stuck, 0 errored"


@pytest.mark.skipif(
    not COUNTS_DESERIALIZED_RECORDS,
    reason="this morango marks deserialized records clean in bulk",
)
def test_status__stage_running__shows_its_counted_progress_and_exits_zero(
    pushed_and_dequeued, pieces_of_three, monkeypatch
):
    # ask for the status from inside the real deserialization, halfway through it
    seen = {}
    save = Storage.update_job_progress

    def save_then_ask_at_half(storage, job_id, progress, total, extra_metadata=None):
        save(storage, job_id, progress, total, extra_metadata)
        if progress == total // 2 and not seen:
            seen["text"] = status()
            seen["json"] = status_json()

    monkeypatch.setattr(Storage, "update_job_progress", save_then_ask_at_half)

    run_stage_jobs()

    code, out = seen["text"]
    header, dequeuing, deserializing = out.splitlines()[:3]
    assert code == 0
    assert header.split()[:3] == ["TRANSFER", "SESSION", "DIRECTION"]
    assert dequeuing.split()[4:7] == ["dequeuing", "moved", "on"]
    assert deserializing.split()[:9] == [
        pushed_and_dequeued["id"],
        "push",
        "Riverside",
        "School",
        "deserializing",
        "started",
        "RUNNING",
        "50%",
        "(6/12)",
    ]
    code, report = seen["json"]
    [stage] = [s for s in report["stages"] if s["stage"] == "deserializing"]
    assert code == 0 and report["healthy"] is True
    assert stage["job_state"] == "RUNNING"
    assert (stage["progress"], stage["total_progress"]) == (6, 12)
    assert stage["status_text"] == "Deserializing 6 / 12 records for Riverside School"
    assert stage["started_at"] is not None and stage["finished_at"] is None
    assert stage["problem"] is None


def test_status__stage_completed__listed_as_done_and_exits_zero(pull_at_serializing):
    run_stage_jobs()

    code, out = status()
    _, report = status_json()

    stage = _only_stage(report)
    assert code == 0
    assert stage["transfer_session_id"] == pull_at_serializing["id"]
    assert stage["direction"] == "pull"
    assert stage["facility_name"] == "Riverside School"
    assert stage["stage"] == transfer_stages.SERIALIZING
    assert stage["stage_status"] == "completed"
    assert stage["job_state"] == "COMPLETED"
    assert stage["percentage"] == 1
    assert stage["status_text"].startswith("Serializing done for Riverside School: ")
    assert stage["problem"] is None
    assert "COMPLETED  100%" in out
    assert out.splitlines()[-1] == "1 background stage: 0 stuck, 0 errored"


def test_status__stage_errored__names_the_error_and_exits_one(failed_queuing):
    code, out = status()
    json_code, report = status_json()

    errored = [s for s in report["stages"] if s["problem"] == "errored"]
    assert code == json_code == 1
    assert report["healthy"] is False
    assert report["summary"] == {"stages": 2, "stuck": 0, "errored": 1}
    [stage] = errored
    assert stage["stage"] == transfer_stages.QUEUING
    assert stage["stage_status"] == "errored"
    assert stage["job_state"] == "FAILED"
    assert stage["detail"].startswith("JSONDecodeError: ")
    assert "errored: JSONDecodeError: " in out
    assert out.splitlines()[-1] == "2 background stages: 0 stuck, 1 errored"


def test_status__stage_errored_before_the_error_window__listed_and_exits_zero(
    failed_queuing,
):
    [failed] = job_storage.filter_jobs(state="FAILED")
    two_hours_ago = timezone.now() - datetime.timedelta(hours=2)
    failed.update_metadata(finished_at=two_hours_ago.isoformat())

    code, report = status_json("--errors-within", "3600")

    stage = [s for s in report["stages"] if s["job_state"] == "FAILED"][0]
    assert code == 0
    assert stage["problem"] is None
    assert stage["detail"].startswith("JSONDecodeError: ")


def test_status__job_queued_past_the_threshold__stuck_and_exits_two(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    _backdate_job(job.job_id, 120)

    code, report = status_json("--stuck-after", "60")

    stage = _only_stage(report)
    assert code == 2
    assert stage["problem"] == "stuck"
    assert stage["detail"] == "job QUEUED for 120s, over 60s"


def test_status__job_queued_within_the_threshold__not_stuck_and_exits_zero(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    _backdate_job(job.job_id, 30)

    code, report = status_json("--stuck-after", "60")

    stage = _only_stage(report)
    assert code == 0
    assert stage["job_state"] == "QUEUED"
    assert stage["problem"] is None
    assert stage["status_text"] == (
        "Serializing for Riverside School: waiting for a worker"
    )


def test_status__job_gone_past_the_grace__stuck_without_a_job_and_exits_two(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    # as if job storage lost the row outside Kolibri's API (no job hook runs)
    delete_job_rows(job.job_id)
    _backdate_stage(pull_at_serializing["id"], MISSING_JOB_GRACE_SECONDS + 1)

    code, out = status()
    _, report = status_json()

    stage = _only_stage(report)
    assert code == 2
    assert stage["transfer_session_id"] == pull_at_serializing["id"]
    assert stage["facility_name"] == "Riverside School"
    assert stage["job_state"] is None
    assert stage["problem"] == "stuck"
    assert stage["detail"] == "no job in job storage"
    assert "no job" in out and "stuck: no job in job storage" in out


def test_status__stuck_run_from_the_command_line__process_exits_two(
    pull_at_serializing, monkeypatch, capsys
):
    from django.db import connections

    from kolibri_sync_extras_plugin.management.commands.sync_extras_status import (
        Command,
    )

    [job] = queued_stage_jobs()
    delete_job_rows(job.job_id)
    _backdate_stage(pull_at_serializing["id"], MISSING_JOB_GRACE_SECONDS + 1)
    # the command closes every connection when it ends, the test's own included
    monkeypatch.setattr(connections, "close_all", lambda: None)

    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["kolibri", COMMAND])

    assert exited.value.code == 2
    assert "1 stuck" in capsys.readouterr().err


def test_status__job_gone_within_the_grace__listed_not_stuck_and_exits_zero(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    delete_job_rows(job.job_id)

    code, report = status_json()

    stage = _only_stage(report)
    assert code == 0
    assert stage["job_state"] is None
    assert stage["problem"] is None


def test_status__job_running_in_a_dead_worker__stuck_and_exits_two(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    dead_worker = ended_process_identity()
    mark_running_in(job.job_id, dead_worker)

    code, report = status_json()

    stage = _only_stage(report)
    assert code == 2
    assert stage["problem"] == "stuck"
    assert stage["detail"] == "worker process {} is gone".format(dead_worker["pid"])


def test_status__job_running_in_a_live_worker__not_stuck_and_exits_zero(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    mark_running_in(job.job_id, live_identity())

    code, report = status_json()

    assert code == 0
    assert _only_stage(report)["problem"] is None


def test_status_json__job_running__names_its_worker_process(pull_at_serializing):
    [job] = queued_stage_jobs()
    worker = live_identity()
    mark_running_in(job.job_id, worker)

    code, report = status_json()

    assert _only_stage(report)["worker_process"] == str(worker["pid"])


def test_status_json__stage_without_job__names_no_worker_process(
    pull_at_serializing,
):
    [job] = queued_stage_jobs()
    delete_job_rows(job.job_id)

    code, report = status_json()

    assert _only_stage(report)["worker_process"] is None


def test_status__one_stuck_and_one_errored__stuck_outranks_and_exits_two(
    failed_queuing, async_client, server_sync_session
):
    waiting = async_client.create(_another_client(server_sync_session), push=False)
    async_client.proceed_to(
        waiting["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    [job] = queued_stage_jobs()
    _backdate_job(job.job_id, 120)

    code, report = status_json("--stuck-after", "60")

    assert code == 2
    assert report["summary"] == {"stages": 3, "stuck": 1, "errored": 1}
