"""
A stage job's worker is called dead only when the poller can tell: same boot,
same pid namespace, and the pid gone or reused. A worker in a container of its own
(a pid namespace of its own, maybe the same host name) is never called dead.
"""

import os
import subprocess
import sys

import pytest
from kolibri.core.tasks.main import job_storage
from morango.constants import transfer_statuses

from kolibri_sync_extras_plugin.job.worker_identity import current_identity
from kolibri_sync_extras_plugin.job.worker_identity import identity_of
from kolibri_sync_extras_plugin.job.worker_identity import is_gone
from kolibri_sync_extras_plugin.job.worker_identity import is_running

from ..helpers.constants import ALL_DATABASES
from ..helpers.jobs import queued_stage_jobs
from ..helpers.jobs import run_stage_jobs
from ..helpers.worker_processes import ended_process_identity
from ..helpers.worker_processes import free_pid
from ..helpers.worker_processes import live_identity
from ..helpers.worker_processes import mark_running_in
from ..helpers.worker_processes import own_namespace_identity


def test_is_gone__process_ended__gone():
    assert is_gone(ended_process_identity())


def test_is_gone__live_process__not_gone():
    assert not is_gone(live_identity())


def test_is_gone__pid_now_held_by_a_newer_process__gone():
    reused = dict(live_identity(), start_time=live_identity()["start_time"] - 1)

    assert is_gone(reused)


def test_is_gone__ended_process_of_another_pid_namespace__not_gone():
    assert not is_gone(own_namespace_identity(free_pid()))


def test_is_gone__ended_process_of_another_boot__not_gone():
    other_boot = dict(ended_process_identity(), boot_id="another-boot")

    assert not is_gone(other_boot)


@pytest.mark.parametrize("recorded", [None, "", "not json", '{"other": 1}'])
def test_is_gone__no_identity_recorded__not_gone(recorded):
    assert not is_gone(identity_of(recorded))


def test_is_running__live_process__running():
    assert is_running(live_identity())


def test_is_running__process_ended__not_running():
    assert not is_running(ended_process_identity())


def test_is_running__pid_now_held_by_a_newer_process__not_running():
    reused = dict(live_identity(), start_time=live_identity()["start_time"] - 1)

    assert not is_running(reused)


def test_is_running__process_of_another_boot__cannot_tell_so_not_running():
    other_boot = dict(live_identity(), boot_id="another-boot")

    assert not is_running(other_boot)


@pytest.mark.parametrize("recorded", [None, "", "not json", '{"other": 1}'])
def test_is_running__no_identity_recorded__not_running(recorded):
    assert not is_running(identity_of(recorded))


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_stage_job_runs__records_the_process_running_it(pull_at_serializing):
    [job] = run_stage_jobs()

    recorded = identity_of(job_storage.get_orm_job(job.job_id).worker_extra)

    assert recorded == current_identity()


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_job_running_in_own_pid_namespace_same_host_name__client_polls__still_started(
    pull_at_serializing, async_client
):
    # a pid that no process of the poller's namespace has: the worker's pid in its
    # own namespace means nothing here
    [job] = queued_stage_jobs()
    mark_running_in(job.job_id, own_namespace_identity(free_pid()))

    polled = async_client.get(pull_at_serializing["id"])

    assert polled["transfer_stage_status"] == transfer_statuses.STARTED
    assert job_storage.get_orm_job(job.job_id).state == "RUNNING"


@pytest.fixture
def proc_stat_unreadable(monkeypatch):
    """``/proc/<pid>/stat`` of other processes cannot be read (``hidepid``, users)."""
    from kolibri_sync_extras_plugin.job import worker_identity

    read = worker_identity._read
    own = "/proc/{}/stat".format(os.getpid())

    def unreadable_stat(path):
        if path.endswith("/stat") and path != own:
            return None
        return read(path)

    monkeypatch.setattr(worker_identity, "_read", unreadable_stat)


def test_is_gone__live_process_whose_proc_entry_cannot_be_read__not_gone(
    proc_stat_unreadable,
):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = dict(live_identity(), pid=child.pid, start_time=1)

        assert not is_gone(identity)
    finally:
        child.kill()
        child.wait()


def test_is_gone__ended_process_whose_proc_entry_cannot_be_read__gone(
    proc_stat_unreadable,
):
    assert is_gone(ended_process_identity())
