"""
Which process runs a stage job, told apart well enough to say that it died.

Kolibri records a running job's host name and pid. Neither is enough: a web
container and a worker container can share a host name but not a pid namespace (a
Kubernetes pod, Docker with host networking), so the worker's pid means nothing to
the web process; and two hosts never share one. A job therefore also carries the
identity of the process that runs it: the boot, the pid namespace, the pid and the
pid's start time. Another process can only call that worker dead when it shares
the boot and the pid namespace and that pid is gone or belongs to a newer process;
whenever it cannot tell, the worker counts as alive.
"""

import json
import os

__all__ = [
    "IDENTITY_KEY",
    "current_identity",
    "identity_of",
    "is_gone",
    "is_running",
    "record_current_worker",
    "worker_extra",
    "CLAIMED_KEY",
    "run_claimed",
    "RESERVED_BY_KEY",
    "reservation_extra",
    "reserver_of",
]

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_PID_NAMESPACE_PATH = "/proc/{}/ns/pid"
_STAT_PATH = "/proc/{}/stat"

#: The key of the identity in a job's ``worker_extra`` (a JSON object).
IDENTITY_KEY = "sync_extras_worker"
#: The key of the identity of the process that reserved a PENDING stage job.
RESERVED_BY_KEY = "sync_extras_reserved_by"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace(pid="self"):
    try:
        return os.stat(_PID_NAMESPACE_PATH.format(pid)).st_ino
    except OSError:
        return None


def _start_time(pid):
    """
    :return: When the process with ``pid`` started, in clock ticks since boot (field
        22 of ``/proc/<pid>/stat``), or ``None`` if there is no such process
    :rtype: int|None
    """
    stat = _read(_STAT_PATH.format(pid))
    if not stat:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after it
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def current_identity():
    """
    The identity of the calling process, or ``None`` where ``/proc`` cannot give it
    (not Linux).

    :rtype: dict|None
    """
    pid = os.getpid()
    identity = {
        "boot_id": _read(_BOOT_ID_PATH),
        "pid_namespace": _pid_namespace(),
        "pid": pid,
        "start_time": _start_time(pid),
    }
    if None in identity.values():
        return None
    return identity


#: Set in a job's ``worker_extra`` once its run holds its run claim (see
#: :mod:`.run_claim`).
CLAIMED_KEY = "sync_extras_run_claimed"


def worker_extra(identity, claimed=False):
    """
    :param claimed: Whether the run holds its run claim (see :mod:`.run_claim`)
    :return: The ``worker_extra`` text that records ``identity`` on a job
    :rtype: str
    """
    extra = {IDENTITY_KEY: identity}
    if claimed:
        extra[CLAIMED_KEY] = True
    return json.dumps(extra)


def run_claimed(worker_extra_text):
    """
    :param worker_extra_text: A job's ``worker_extra``
    :return: Whether the job's run recorded that it holds its run claim
    :rtype: bool
    """
    try:
        return json.loads(worker_extra_text or "").get(CLAIMED_KEY) is True
    except (ValueError, TypeError, AttributeError):
        return False


def reservation_extra(identity):
    """
    :param identity: The reserving process (see :func:`current_identity`), or
        ``None`` where it cannot be told
    :return: The ``worker_extra`` text of a job reserved by it
    :rtype: str
    """
    return json.dumps({RESERVED_BY_KEY: identity})


def reserver_of(worker_extra_text):
    """
    :param worker_extra_text: A PENDING stage job's ``worker_extra``
    :return: The identity of the process that reserved it, or ``None``
    :rtype: dict|None
    """
    return _identity_under(worker_extra_text, RESERVED_BY_KEY)


def identity_of(worker_extra_text):
    """
    :param worker_extra_text: A job's ``worker_extra``
    :return: The worker identity it records, or ``None``
    :rtype: dict|None
    """
    return _identity_under(worker_extra_text, IDENTITY_KEY)


def _identity_under(worker_extra_text, key):
    try:
        identity = json.loads(worker_extra_text or "")[key]
    except (ValueError, TypeError, KeyError):
        return None
    return identity if isinstance(identity, dict) else None


def is_gone(identity):
    """
    Whether the process ``identity`` names has certainly ended: it ran in this boot
    and in this pid namespace, and its pid is free or taken by another process.

    :param identity: See :func:`current_identity`; ``None`` when unknown
    :return: ``False`` whenever that cannot be told from here
    :rtype: bool
    """
    process = _process_seen_from_here(identity)
    return process is not None and _process_ended(*process)


def is_running(identity):
    """
    Whether the process ``identity`` names certainly still runs: it ran in this
    boot and in this pid namespace, and its pid still belongs to it.

    :param identity: See :func:`current_identity`; ``None`` when unknown
    :return: ``False`` whenever that cannot be told from here
    :rtype: bool
    """
    process = _process_seen_from_here(identity)
    if process is None:
        return False
    pid, started = process
    return _start_time(pid) == started


def _process_seen_from_here(identity):
    """
    :return: ``(pid, start_time)`` of the process ``identity`` names, if it ran in
        this boot and this pid namespace, where its pid means the same; else
        ``None``
    :rtype: tuple|None
    """
    here = current_identity()
    if not identity or here is None:
        return None
    try:
        same_boot = identity["boot_id"] == here["boot_id"]
        same_namespace = int(identity["pid_namespace"]) == here["pid_namespace"]
        pid, started = int(identity["pid"]), int(identity["start_time"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (same_boot and same_namespace):
        return None
    return pid, started


def _process_ended(pid, started):
    """
    Whether the process that had ``pid`` and started at ``started`` has ended.

    Asking the kernel to signal nothing tells whether any process has the pid, even
    where ``/proc`` hides other users' processes (``hidepid``); only then is its
    start time read, to tell a reused pid. A ``/proc`` entry that cannot be read
    means "cannot tell", and so "not ended".
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user has the pid
    except OSError:
        return False
    now_started = _start_time(pid)
    return now_started is not None and now_started != started


def record_current_worker(job_id, claimed=False):
    """
    Record the calling process as the one running a job. Called as the job starts
    to run, in the process that runs it (Kolibri's own record, made just before,
    leaves ``worker_extra`` empty), and again once the run holds its run claim.

    :param job_id: The job's id
    :param claimed: Whether the run holds its run claim
    """
    from kolibri.core.tasks.main import job_storage

    identity = current_identity()
    if identity is not None or claimed:
        job_storage.save_worker_info(job_id, extra=worker_extra(identity, claimed))
