"""
Worker processes for the dead-worker tests: their identities as a job records
them, for a live process, an ended one, and one in a pid namespace of its own.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from kolibri_sync_extras_plugin.job.worker_identity import current_identity
from kolibri_sync_extras_plugin.job.worker_identity import worker_extra

from .job_rows import update_job_row

_PRINT_IDENTITY = (
    "import json; from kolibri_sync_extras_plugin.job.worker_identity import current_identity; "
    "print(json.dumps(current_identity()))"
)


def _identity_of_child(command):
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def ended_process_identity():
    """The identity of a process of this pid namespace that has ended."""
    return _identity_of_child([sys.executable, "-c", _PRINT_IDENTITY])


def live_identity():
    """The identity of this, the test's, process."""
    return current_identity()


def free_pid():
    """A pid no process of this pid namespace has now."""
    pid = 300000
    while os.path.exists("/proc/{}".format(pid)):
        pid += 1
    return pid


def own_namespace_identity(pid):
    """
    The identity of a process that ran in a pid namespace of its own, as a worker
    in its own container does, under ``pid`` there.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a pid namespace needs root and unshare")
    script = "echo {} > /proc/sys/kernel/ns_last_pid && {} -c {!r}".format(
        pid - 1, sys.executable, _PRINT_IDENTITY
    )
    return _identity_of_child(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script]
    )


def mark_running_in(job_id, identity):
    """Mark a job RUNNING in the worker process ``identity``, on this host."""
    update_job_row(
        job_id,
        state="RUNNING",
        worker_host=socket.gethostname(),
        worker_process=str(identity["pid"]),
        worker_extra=worker_extra(identity),
    )
