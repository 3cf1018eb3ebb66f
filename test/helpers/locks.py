"""
A lock file held by another operating system process, as another server process
(a uwsgi worker) holds the plugin's server-wide locks.
"""

import contextlib
import subprocess
import sys

_HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a") as lock_file:
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    print(time.time(), flush=True)
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
"""


@contextlib.contextmanager
def other_process_holding_lock(path, seconds):
    """
    A child process holds an exclusive ``flock`` on ``path`` for ``seconds`` from
    the start of the block. The block gets a function that waits for the child and
    returns the time (``time.time()``) just before it let the lock go.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )

    def released_at():
        output, _ = child.communicate(timeout=60)
        return float(output.strip().splitlines()[-1])

    try:
        assert child.stdout.readline().strip() == "held"
        yield released_at
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
