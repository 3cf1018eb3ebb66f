"""
A Kolibri server split the way a production deployment runs it: one process serves
HTTP with Kolibri's WSGI application and runs no job workers (as uwsgi or another
WSGI server does for the ``kolibri-server`` package), and ``kolibri services`` runs
the job workers in another process. Both share the instance's home, so its
databases and its job storage.

``kolibri start`` always runs the workers in the server process, so the HTTP half
is this module run as a program::

    python -m sync_lab.harness.split --port 8080

It serves Kolibri with cheroot, the WSGI server Kolibri itself uses, on 127.0.0.1.
"""

import argparse
import shlex
import signal
import sys

from mirakuru.exceptions import ExecutorError

from . import instances
from .instances import LOCALHOST
from .instances import InstanceError
from .instances import KolibriInstance
from .instances import LabService

__all__ = ["SplitKolibriInstance", "serve_http"]


class SplitKolibriInstance(KolibriInstance):
    """
    A :class:`~sync_lab.harness.instances.KolibriInstance` whose :meth:`start` runs
    the HTTP process only; :meth:`start_worker` runs ``kolibri services`` beside it.
    Either can be stopped, killed and started again on its own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._worker = None
        self._worker_count = 0

    def server_command(self):
        return [self.python, "-m", "sync_lab.harness.split", "--port", str(self.port)]

    @property
    def worker_running(self):
        """:rtype: bool"""
        return self._worker is not None and self._worker.running()

    @property
    def worker_pid(self):
        """:rtype: int|None"""
        return self._worker.process.pid if self.worker_running else None

    def start_worker(self, timeout=60, pid_namespace_pid=None):
        """
        Start ``kolibri services`` for this home and wait until its workers have
        started (Kolibri logs it), which is when stalled jobs have been requeued.

        :param pid_namespace_pid: Run the worker in a pid namespace of its own, as
            in a container of its own that shares the host name, with this pid
            there (needs root and ``unshare``); the worker's pid then means nothing
            to the HTTP process
        :return: The pid of the process started here (``unshare`` for a worker in
            its own pid namespace)
        :rtype: int
        """
        if self.worker_running:
            return self.worker_pid
        self.prepare()
        self._worker_count += 1
        output_path = self.lab_dir / "services-{}.txt".format(self._worker_count)
        command = [self.python, "-m", "kolibri", "services", "--foreground"]
        command.append("--skip-update")
        if pid_namespace_pid is not None:
            command = _in_own_pid_namespace(command, pid_namespace_pid)
        with open(output_path, "w") as output:
            self._worker = LabService(
                command,
                self.env(),
                self.home,
                output,
                timeout,
                ready_text="Starting async task workers",
            )
            # stopped at exit with every other server the lab started
            instances._running.add(self)
            try:
                self._worker.start()
            except ExecutorError as e:
                self._worker = None
                raise InstanceError(
                    "{}: the worker did not start ({}); output:\n{}".format(
                        self.name, e, output_path.read_text()[-4000:]
                    )
                )
        return self.worker_pid

    def kill_worker(self):
        """
        SIGKILL the worker process by its pid, as the kernel's out-of-memory killer
        would: nothing in it gets to clean up.

        :return: The killed process's pid
        """
        pid = self.worker_pid
        if pid is None:
            raise InstanceError("{} has no worker process".format(self.name))
        worker, self._worker = self._worker, None
        worker.kill(sig=signal.SIGKILL)
        return pid

    def stop_worker(self):
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop_quietly()

    def stop(self):
        """Stop the worker process, then the HTTP process, each by its pid."""
        self.stop_worker()
        super().stop()


def _in_own_pid_namespace(command, pid):
    """
    ``command`` run in a new pid namespace as pid ``pid`` there: the namespace's
    first process sets the pid it hands out next, then waits for the command.
    ``--kill-child`` ends the namespace when ``unshare`` itself is killed.
    """
    script = "echo {} > /proc/sys/kernel/ns_last_pid; {} & wait".format(
        pid - 1, " ".join(shlex.quote(part) for part in command)
    )
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] + [
        "sh",
        "-c",
        script,
    ]


def serve_http(port, host=LOCALHOST):
    """
    Serve Kolibri's WSGI application on ``host:port`` until SIGTERM or SIGINT, with
    no job workers: the HTTP half of a split deployment.
    """
    from kolibri.utils.main import initialize

    initialize(skip_update=True)

    from cheroot.wsgi import Server
    from kolibri.deployment.default.wsgi import application
    from kolibri.utils.conf import OPTIONS

    server_options = OPTIONS["Server"]
    server = Server(
        (host, port),
        application,
        numthreads=server_options["CHERRYPY_THREAD_POOL"],
        request_queue_size=server_options["CHERRYPY_QUEUE_SIZE"],
        timeout=server_options["CHERRYPY_SOCKET_TIMEOUT"],
    )
    # cheroot stops cleanly on KeyboardInterrupt; make SIGTERM one
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.stdout.write("Serving Kolibri on http://{}:{}\n".format(host, port))
    sys.stdout.flush()
    server.safe_start()


def main(argv=None):
    parser = argparse.ArgumentParser(description=serve_http.__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve_http(args.port)


if __name__ == "__main__":
    main()
