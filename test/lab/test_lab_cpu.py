"""The lab's CPU meter reads real processes: the server's tree and the clients'."""

import subprocess
import sys

from sync_lab.harness.cpu import PhaseCpuMeter
from sync_lab.harness.cpu import tree_cpu_seconds

BUSY = "import time\nend = time.process_time() + {}\nwhile time.process_time() < end: pass\n"


class _Server:
    """A server whose one process is ``pid``, as a plain ``kolibri start``."""

    def __init__(self, pid):
        self.pid = pid


def test_tree_cpu__a_process_and_the_child_it_runs__both_counted():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', {!r}])\n"
            "input()\n".format(BUSY.format(0.3)),
        ],
        stdin=subprocess.PIPE,
    )
    try:
        # the child has run and been reaped once the parent waits for input
        seconds = 0.0
        for _ in range(100):
            seconds = tree_cpu_seconds([parent.pid])
            if seconds >= 0.3:
                break
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"])
        assert seconds >= 0.3
    finally:
        parent.communicate(b"\n", timeout=30)


def test_phase_meter__clients_are_the_waited_for_commands__server_its_own_tree():
    server = subprocess.Popen(
        [sys.executable, "-c", BUSY.format(0.4) + "input()\n"], stdin=subprocess.PIPE
    )
    try:
        with PhaseCpuMeter(_Server(server.pid)) as meter:
            subprocess.run([sys.executable, "-c", BUSY.format(0.3)], check=True)
            while tree_cpu_seconds([server.pid]) < 0.4:
                subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"])
    finally:
        server.communicate(b"\n", timeout=30)

    assert meter.result.clients_seconds >= 0.3
    assert 0.0 < meter.result.server_seconds <= 0.4 + 0.2
    assert meter.result.wall_seconds >= 0.3


def test_phase_meter__server_read_after_the_phase__counts_its_work_after_the_clients():
    server = subprocess.Popen(
        [sys.executable, "-c", "input()\n" + BUSY.format(0.4) + "input()\n"],
        stdin=subprocess.PIPE,
    )
    try:
        with PhaseCpuMeter(_Server(server.pid)) as meter:
            pass
        # the server goes on working once the phase's clients are done
        server.stdin.write(b"\n")
        server.stdin.flush()
        while tree_cpu_seconds([server.pid]) < 0.4:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"])
        after = meter.server_seconds_so_far()
    finally:
        server.communicate(b"\n", timeout=30)

    assert meter.result.server_seconds < 0.2
    assert after >= 0.3
