"""
Faults the lab injects into a running sync: a killed server, a server process
killed in the middle of a stage request (:class:`ReservationKiller`), and a
client's sync running in a thread meanwhile.
:func:`sync_lab.harness.jobs.wait_for_stage_job` times a fault to land while a
particular stage job runs.
"""

import os
import signal
import threading
import time
from pathlib import Path

from .instances import InstanceError

__all__ = [
    "BackgroundSync",
    "kill_server",
    "kill_reserving_process",
    "ReservationKiller",
]


def kill_server(instance):
    """
    SIGKILL an instance's server process by its pid, as a crash, a power cut or
    the out-of-memory killer would: nothing in it gets to clean up (with ``kolibri
    start``, its job workers neither: they are its threads). The instance can be
    started again afterwards.

    :type instance: sync_lab.harness.instances.KolibriInstance
    :return: The killed process's pid
    :rtype: int
    """
    return instance.kill()


class BackgroundSync(threading.Thread):
    """
    A client's ``sync`` command run in a thread, so the lab can act on the server
    while the client syncs. :attr:`result` is its
    :class:`~sync_lab.harness.instances.CommandResult`, :attr:`ended` the monotonic time
    the command ended at.
    """

    def __init__(self, client, *sync_args, **sync_kwargs):
        super().__init__(name="sync-{}".format(client.name), daemon=True)
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
        :rtype: sync_lab.harness.instances.CommandResult
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


def _pending_rows(job_id=None):
    from kolibri.core.tasks.job import State

    from kolibri_sync_extras_plugin.compat import job_rows
    from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
    from kolibri_sync_extras_plugin.stage_status import SYNC_EXTRAS_QUEUE

    return job_rows(
        queue=SYNC_EXTRAS_QUEUE, func=RUN_STAGE_TASK, job_id=job_id, state=State.PENDING
    )


def kill_reserving_process(pids, wait, ready_path=None, stop_path=None, interval=0.002):
    """
    Inside the server instance: SIGKILL the first of ``pids`` (e.g. uwsgi's
    workers) caught in the middle of a request that has reserved a stage job and
    not yet queued it.

    The plugin reserves a stage's job as a PENDING row, recording the reserving
    process, while the request for the stage runs, and queues it as the request
    ends: between the two, the process is serving that request. Each reservation
    of one of ``pids`` seen is held still with SIGSTOP; if its job is still
    PENDING then, the process is killed there (SIGKILL), else it is let go on
    (SIGCONT) and the next reservation is waited for. Processes not in ``pids``
    are never signalled.

    :param pids: The processes that may be stopped and killed
    :param wait: Seconds to watch at most
    :param ready_path: A file made once the watching has begun
    :param stop_path: A file whose existence ends the watching
    :return: ``killed`` (``None`` if none was caught; else ``pid``, ``job_id``,
        ``stage``, ``transfer_session_id`` and ``at``, the ``time.monotonic()``
        of the kill, which every process of the machine shares) and ``missed``
        (the stages whose reservation was queued before its process was held)
    :rtype: dict
    """
    from kolibri.core.tasks.job import Job

    from kolibri_sync_extras_plugin.job.worker_identity import reserver_of
    from kolibri_sync_extras_plugin.stage_status import transfer_session_of_job

    pids = {int(pid) for pid in pids}
    missed = []
    seen = set()
    if ready_path:
        Path(ready_path).touch()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if stop_path and os.path.exists(stop_path):
            break
        for row in _pending_rows():
            pid = (reserver_of(row.worker_extra) or {}).get("pid")
            if row.id in seen or pid not in pids:
                continue
            seen.add(row.id)
            job = Job.from_json(row.saved_job)
            stage = (job.kwargs or {}).get("stage")
            os.kill(pid, signal.SIGSTOP)
            try:
                still_pending = bool(_pending_rows(job_id=row.id))
            except BaseException:
                # never leave a process stopped
                os.kill(pid, signal.SIGCONT)
                raise
            if not still_pending:
                # queued before the process stopped: its request has ended
                os.kill(pid, signal.SIGCONT)
                missed.append(stage)
                continue
            os.kill(pid, signal.SIGKILL)
            return {
                "killed": {
                    "pid": pid,
                    "job_id": row.id,
                    "stage": stage,
                    "transfer_session_id": transfer_session_of_job(job),
                    "at": time.monotonic(),
                },
                "missed": missed,
            }
        time.sleep(interval)
    return {"killed": None, "missed": missed}


class ReservationKiller(threading.Thread):
    """
    :func:`kill_reserving_process` run inside a server instance from a thread of
    the lab: :meth:`start_watching` returns once it watches, so the sync it is
    to interrupt can begin; :meth:`stop_watching` ends it early (once that sync
    has ended), and :meth:`wait` returns what it did.
    """

    def __init__(self, instance, pids, wait):
        """
        :type instance: sync_lab.harness.instances.KolibriInstance
        :param pids: The processes it may kill (see :func:`kill_reserving_process`)
        :param wait: Seconds it watches at most
        """
        super().__init__(
            name="reservation-killer-{}".format(instance.name), daemon=True
        )
        self.instance = instance
        self.pids = sorted(pids)
        self.watch_seconds = wait
        marker = instance.lab_dir / "reservation-killer-{}".format(id(self))
        self.ready_path = marker.with_suffix(".ready")
        self.stop_path = marker.with_suffix(".stop")
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result = self.instance.call(
                kill_reserving_process,
                timeout=self.watch_seconds + 300,
                pids=self.pids,
                wait=self.watch_seconds,
                ready_path=str(self.ready_path),
                stop_path=str(self.stop_path),
            )
        except BaseException as e:  # reported by wait()
            self.error = e

    def start_watching(self, timeout=120):
        """
        Start, and return once the instance watches job storage.

        :raises InstanceError: if it does not within ``timeout`` seconds
        """
        self.start()
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if not self.is_alive() or time.monotonic() > deadline:
                raise InstanceError(
                    "{}: the reservation killer did not start watching ({})".format(
                        self.instance.name, self.error
                    )
                )
            time.sleep(0.05)

    def stop_watching(self):
        """Ask it to stop watching; :meth:`wait` then returns soon."""
        self.stop_path.touch()

    def wait(self, timeout):
        """
        :return: What :func:`kill_reserving_process` returned
        :rtype: dict
        :raises InstanceError: if it has not ended within ``timeout`` seconds
        """
        self.join(timeout)
        if self.is_alive():
            raise InstanceError(
                "{}: the reservation killer was still watching after {}s".format(
                    self.instance.name, timeout
                )
            )
        if self.error is not None:
            raise self.error
        return self.result
