"""
Faults the lab injects into a running sync: a killed server, and a client's sync
running in a thread meanwhile. :func:`sync_lab.harness.jobs.wait_for_stage_job` times a
fault to land while a particular stage job runs.
"""

import threading
import time

from .instances import InstanceError

__all__ = [
    "BackgroundSync",
    "kill_server",
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
