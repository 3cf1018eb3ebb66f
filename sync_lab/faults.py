"""
Faults the lab injects into a running sync, and the watching that times them.

A fault has to land while a particular stage job runs, which may last only a few
seconds, so :func:`wait_for_stage_job` reads the server's job storage file directly
(a few milliseconds a look) instead of starting Kolibri to ask it. That works for
an instance on SQLite, whose job storage is a file in its home.
"""

import json
import os
import signal
import sqlite3
import threading
import time

from .instances import InstanceError

__all__ = [
    "BackgroundSync",
    "kill_server",
    "sigkill",
    "stage_job_rows",
    "wait_for_stage_job",
]

_JOB_STORAGE_FILE = "job_storage.sqlite3"
_STAGE_TASK = "kolibri_sync_extras_plugin.tasks.run_background_stage"


def sigkill(process):
    """
    SIGKILL a process the lab started, by its pid, and reap it: a crash, a power
    cut or the out-of-memory killer; nothing in it gets to clean up.

    :type process: subprocess.Popen
    """
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def kill_server(instance):
    """
    SIGKILL an instance's server process (with ``kolibri start``, its job workers
    too: they are its threads). The instance can be started again afterwards.

    :type instance: sync_lab.instances.KolibriInstance
    :return: The killed process's pid
    :rtype: int
    """
    process = instance.process
    if process is None or process.poll() is not None:
        raise InstanceError("{} is not running".format(instance.name))
    sigkill(process)
    # forget the dead process, so that start() starts a new one
    instance.stop()
    return process.pid


def stage_job_rows(instance):
    """
    The plugin's stage jobs, read straight from the instance's SQLite job storage.

    :type instance: sync_lab.instances.KolibriInstance
    :return: Dicts with ``job_id``, ``state``, ``stage``, ``direction``,
        ``transfer_session_id`` and ``worker_process``
    :rtype: list
    """
    path = instance.options.get("Tasks", {}).get(
        "JOB_STORAGE_FILEPATH", _JOB_STORAGE_FILE
    )
    path = instance.home / path
    if not path.exists():
        return []
    connection = sqlite3.connect("file:{}?mode=ro".format(path), uri=True, timeout=5)
    try:
        rows = connection.execute(
            "SELECT id, state, worker_process, saved_job FROM jobs WHERE func = ?",
            (_STAGE_TASK,),
        ).fetchall()
    except sqlite3.OperationalError:
        # the server has not created its job table yet
        return []
    finally:
        connection.close()
    jobs = []
    for job_id, state, worker_process, saved_job in rows:
        saved = json.loads(saved_job)
        kwargs = saved.get("kwargs") or {}
        metadata = saved.get("extra_metadata") or {}
        jobs.append(
            {
                "job_id": job_id,
                "state": state,
                "stage": kwargs.get("stage"),
                "direction": metadata.get("direction"),
                "transfer_session_id": kwargs.get("transfer_session_id"),
                "worker_process": worker_process,
            }
        )
    return jobs


def wait_for_stage_job(
    instance, stage, direction, state="RUNNING", timeout=120, interval=0.05
):
    """
    Wait until a stage job of ``direction`` and ``stage`` is in ``state``.

    :return: The job, as :func:`stage_job_rows` describes it
    :rtype: dict
    :raises InstanceError: if none is within ``timeout`` seconds
    """
    deadline = time.monotonic() + timeout
    while True:
        for job in stage_job_rows(instance):
            if (job["stage"], job["direction"], job["state"]) == (
                stage,
                direction,
                state,
            ):
                return job
        if time.monotonic() > deadline:
            raise InstanceError(
                "{}: no {} {} job was {} within {}s; jobs: {}".format(
                    instance.name,
                    direction,
                    stage,
                    state,
                    timeout,
                    stage_job_rows(instance),
                )
            )
        time.sleep(interval)


class BackgroundSync(threading.Thread):
    """
    A client's ``sync`` command run in a thread, so the lab can act on the server
    while the client syncs. :attr:`result` is its
    :class:`~sync_lab.instances.CommandResult`, :attr:`ended` the monotonic time
    the command ended at.
    """

    def __init__(self, client, *sync_args, **sync_kwargs):
        super(BackgroundSync, self).__init__(
            name="sync-{}".format(client.name), daemon=True
        )
        self.client = client
        self.sync_args = sync_args
        self.sync_kwargs = dict(sync_kwargs, check=False)
        self.result = None
        self.error = None
        self.started_at = None
        self.ended = None

    def run(self):
        self.started_at = time.monotonic()
        try:
            self.result = self.client.sync(*self.sync_args, **self.sync_kwargs)
        except BaseException as e:  # reported by wait()
            self.error = e
        finally:
            self.ended = time.monotonic()

    def wait(self, timeout):
        """
        Wait for the command to end.

        :return: Its result
        :rtype: sync_lab.instances.CommandResult
        :raises InstanceError: if it has not ended within ``timeout`` seconds
        """
        self.join(timeout)
        if self.is_alive():
            raise InstanceError(
                "{}: the sync was still running after {}s".format(
                    self.client.name, timeout
                )
            )
        if self.error is not None:
            raise self.error
        return self.result
