"""
CPU time the lab's processes spend in a phase: the server's (every process of
its deployment and what they reaped) and the clients' (the sync commands the lab
ran and waited for). On a machine of a few cores, 32 client processes compete
with the server for them; these figures say how much of the machine each side
took, apart from how long the phase lasted.
"""

import os
import resource
import time
from collections import namedtuple

from .topology import server_root_pids
from .uwsgi_server import child_pids

__all__ = ["PhaseCpu", "PhaseCpuMeter", "tree_cpu_seconds"]

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

PhaseCpu = namedtuple("PhaseCpu", ("server_seconds", "clients_seconds", "wall_seconds"))
PhaseCpu.__doc__ = """
CPU seconds (user and system) of the server's processes and of the clients' sync
commands in one phase, and the phase's length.
"""


def _own_and_reaped_seconds(pid):
    try:
        with open("/proc/{}/stat".format(pid)) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime, stime, cutime and cstime: the 14th to 17th fields of proc(5), the
    # 12th to 15th after the command's name
    return sum(int(value) for value in fields[11:15]) / _TICKS_PER_SECOND


def tree_cpu_seconds(pids):
    """
    CPU seconds of ``pids``, their live descendants and the children they reaped.

    :rtype: float
    """
    seen = set()
    pending = list(pids)
    total = 0.0
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _own_and_reaped_seconds(pid)
        pending.extend(child_pids(pid))
    return total


def _reaped_children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class PhaseCpuMeter:
    """
    Measures one phase: ``with PhaseCpuMeter(server) as meter: ...``, then
    ``meter.result``. The clients' share is what the lab's own waited-for child
    processes used meanwhile, so run nothing else as a child during the phase.
    """

    def __init__(self, server):
        self.server = server
        self.result = None

    def __enter__(self):
        self._pids = server_root_pids(self.server)
        self._server = tree_cpu_seconds(self._pids)
        self._clients = _reaped_children_seconds()
        self._started = time.monotonic()
        return self

    def server_seconds_so_far(self):
        """
        The server's CPU seconds since the phase began, read now: for work the
        server goes on with after the phase's clients have exited.

        :rtype: float
        """
        return tree_cpu_seconds(self._pids) - self._server

    def __exit__(self, *exc_info):
        self.result = PhaseCpu(
            server_seconds=tree_cpu_seconds(self._pids) - self._server,
            clients_seconds=_reaped_children_seconds() - self._clients,
            wall_seconds=time.monotonic() - self._started,
        )
