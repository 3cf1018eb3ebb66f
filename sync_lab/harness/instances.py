"""
One local Kolibri instance: its own home, options, commands and server process.

Every command runs the installed Kolibri in a subprocess (``python -m kolibri``) with
an environment built from scratch for the instance, so nothing leaks in from the
calling process (a test suite's own ``KOLIBRI_HOME`` or enabled plugins) and two
instances never share a database. Servers listen on 127.0.0.1 only.

Code that must run inside an instance (creating or counting records, reading job
storage) is an ordinary importable function, run with :meth:`KolibriInstance.call`:
Kolibri's ``manage shell -c`` imports it, calls it and prints its JSON result.
"""

import atexit
import configparser
import hashlib
import importlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirakuru import Executor
from mirakuru import HTTPExecutor
from mirakuru.base import ENV_UUID
from mirakuru.exceptions import AlreadyRunning
from mirakuru.exceptions import ExecutorError
from mirakuru.exceptions import ProcessExitedWithError

logger = logging.getLogger(__name__)

__all__ = [
    "PLUGIN",
    "LOCALHOST",
    "KEEP_HOMES_ENV",
    "InstanceError",
    "CommandFailed",
    "ServerFailed",
    "CommandResult",
    "KolibriInstance",
    "free_port",
    "running_instances",
]

#: The plugin under test, as Kolibri names it in ``plugins.json``.
PLUGIN = "kolibri_sync_extras_plugin"
LOCALHOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]

# variables that would point a child at another home, settings module or plugin set
_SCRUBBED_PREFIXES = ("KOLIBRI_", "DJANGO_", "MORANGO_")
_CALL_ENV = "SYNC_LAB_CALL"
#: Set to keep every instance's home after the lab is done with it, to read its logs.
KEEP_HOMES_ENV = "SYNC_LAB_KEEP_HOMES"
_RESULT_MARKER = "SYNC_LAB_RESULT "
_READY_PATH = "/api/public/info/"
_OUTPUT_TAIL_LINES = 40
#: A line of a command's output that says what went wrong.
_ERROR_LINE = re.compile(r"Error|Exception|refused|denied")
# what a copied home must not inherit: the template's logs, process state and caches
_NOT_COPIED = frozenset(
    (
        "sync-lab",
        "logs",
        "server.pid",
        "process_control.flag",
        "process_cache",
        "options.ini",
    )
)

# servers still running when the interpreter exits are stopped, whatever failed
_running = set()


class InstanceError(Exception):
    """Something an instance was asked to do did not happen."""


class CommandFailed(InstanceError):
    """A Kolibri command exited non-zero or timed out."""

    def __init__(self, instance, result):
        self.result = result
        super().__init__(
            "{}: `{}` {} after {:.1f}s; last output:\n{}".format(
                instance.name,
                " ".join(result.args),
                "timed out"
                if result.timed_out
                else "exited {}".format(result.returncode),
                result.duration,
                result.tail(),
            )
        )


class ServerFailed(InstanceError):
    """The server process exited or did not answer in time."""


class CommandResult:
    """The outcome of one Kolibri command: exit code, duration, combined output."""

    __slots__ = ("args", "returncode", "duration", "output", "timed_out")

    def __init__(self, args, returncode, duration, output, timed_out=False):
        self.args = list(args)
        self.returncode = returncode
        self.duration = duration
        self.output = output
        self.timed_out = timed_out

    @property
    def ok(self):
        """:rtype: bool"""
        return self.returncode == 0 and not self.timed_out

    def tail(self, lines=_OUTPUT_TAIL_LINES):
        """:rtype: str"""
        return "\n".join(self.output.splitlines()[-lines:])

    def reason(self):
        """
        One line on how the command ended: its exit and its last error line, for
        the first line of a failure message (a test run's closing summary keeps
        only that line).

        :rtype: str
        """
        ended = "timed out" if self.timed_out else "exited {}".format(self.returncode)
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        last = errors[-1] if errors else (lines[-1] if lines else "no output")
        return "{} after {:.1f}s: {}".format(ended, self.duration, last[:300])


#: Set by pytest-xdist in each of its worker processes: ``gw0``, ``gw1``, ...
XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"
#: Under pytest-xdist, each worker draws its ports from a block of its own below
#: the kernel's range for outgoing connections (32768 up), so that two test
#: modules running at once never draw the same free port: a server that lost
#: such a race could not tell, as the other module's server would answer for it.
WORKER_PORTS_START = 20000
WORKER_PORTS_PER_WORKER = 1500


def free_port(host=LOCALHOST):
    """
    A port nothing listens on right now. Another process could take it before the
    caller binds it; :meth:`KolibriInstance.start` retries on a new port if so.
    Under pytest-xdist the port comes from the worker's own block (see
    :data:`WORKER_PORTS_START`).

    :rtype: int
    """
    worker = os.environ.get(XDIST_WORKER_ENV, "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return _free_port_of_worker(host, int(worker[2:]))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _free_port_of_worker(host, worker):
    low = WORKER_PORTS_START + WORKER_PORTS_PER_WORKER * worker
    ports = list(range(low, low + WORKER_PORTS_PER_WORKER))
    random.shuffle(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise InstanceError(
        "no free port in {}-{} for xdist worker gw{}".format(
            low, low + WORKER_PORTS_PER_WORKER - 1, worker
        )
    )


def child_environment(home, base=None):
    """
    The environment of a Kolibri subprocess for ``home``: the caller's, minus every
    Kolibri, Django and morango variable, plus the home and this checkout on the path.

    :param home: The instance's ``KOLIBRI_HOME``
    :param base: The environment to start from; defaults to ``os.environ``
    :rtype: dict
    """
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key != _CALL_ENV
    }
    env["KOLIBRI_HOME"] = str(home)
    # morango derives a device's instance id from the machine and the database's
    # id, which a copied home shares with its template: a system id of its own
    # makes each home a device of its own, as each client of a real server is
    env["MORANGO_SYSTEM_ID"] = (
        "sync-lab-" + hashlib.sha1(str(home).encode("utf-8")).hexdigest()
    )
    python_path = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    # colour codes make the captured output hard to read and to search
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def import_path(func):
    """
    :param func: A module-level function, or its ``"module:name"`` path
    :rtype: str
    """
    if isinstance(func, str):
        return func
    return "{}:{}".format(func.__module__, func.__qualname__)


#: Run its arguments at the niceness given first, and so the scheduling group of
#: its session if it leads that session (field 6 of ``/proc/PID/stat``): the
#: group of a session it only belongs to is its parent's too (see :func:`niced`).
_NICE_SESSION_SCRIPT = (
    'if [ -w /proc/self/autogroup ] && [ "$(cut -d" " -f6 /proc/$$/stat)" = "$$" ]; '
    'then echo "$0" > /proc/self/autogroup; fi; '
    'exec nice -n "$0" "$@"'
)


def niced(command, niceness):
    """
    ``command``, run at ``niceness`` in a session of its own (as the lab runs
    every command) that competes for the processor at that niceness too.

    On Linux with the scheduler's autogroups on (``kernel.sched_autogroup_enabled``)
    each session is a group of its own, given the processor as fairly as any
    other, and a process's niceness counts only against the processes of its own
    group: 32 clients at niceness 19, each in its own session, took 32 shares of
    the processor to the server's one. So the group's niceness is set as well,
    where the kernel has one and the command leads its session; run in its
    parent's session, it leaves that session's group alone.

    :type command: list[str]
    :type niceness: int
    :rtype: list[str]
    """
    return ["sh", "-c", _NICE_SESSION_SCRIPT, str(niceness)] + list(command)


class KolibriInstance:
    """
    One Kolibri instance on this machine.

    Typical use::

        with KolibriInstance("server", plugin=True, sync_options={...}) as server:
            server.provision("Riverside School", "admin", "password")
            server.start()
            ...

    Leaving the ``with`` block stops the server and removes the home (unless
    ``keep_home``). A server left running is stopped when the interpreter exits.
    """

    def __init__(
        self,
        name,
        home=None,
        root=None,
        plugin=False,
        sync_options=None,
        options=None,
        keep_home=None,
        python=None,
    ):
        """
        :param name: A label for logs and errors, e.g. ``"server"``
        :param home: The ``KOLIBRI_HOME`` to use; a new temporary folder by default
        :param root: Where to create the temporary home, when ``home`` is not given
        :param plugin: Whether to enable this plugin in the home
        :param sync_options: Values for the ``[Sync]`` section of ``options.ini``
        :param options: Other ``options.ini`` values, as ``{section: {key: value}}``
        :param keep_home: Leave the home on disk after :meth:`cleanup`; by default,
            only if the ``SYNC_LAB_KEEP_HOMES`` environment variable is set
        :param python: The interpreter that has Kolibri; this one by default
        """
        self.name = name
        if home is None:
            if root is not None:
                Path(root).mkdir(parents=True, exist_ok=True)
            home = tempfile.mkdtemp(prefix="sync-lab-{}-".format(name), dir=root)
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.plugin = plugin
        self.sync_options = dict(sync_options or {})
        self.options = {
            section: dict(values) for section, values in (options or {}).items()
        }
        if keep_home is None:
            keep_home = bool(os.environ.get(KEEP_HOMES_ENV))
        self.keep_home = keep_home
        self.python = python or sys.executable
        #: The niceness its commands run at (see ``nice(1)``); the server's own
        #: process is left as it is
        self.niceness = 0
        #: Where its processes record the CPU of each request and job run (see
        #: :mod:`sync_lab.harness.thread_cpu`); ``None``: not recorded
        self.thread_cpu_dir = None
        self.port = None
        self._server = None
        self._server_output = None
        self._prepared = False
        self._command_count = 0

    def __repr__(self):
        return "<KolibriInstance {} home={} port={}>".format(
            self.name, self.home, self.port
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.cleanup()

    # -- paths ------------------------------------------------------------------

    @property
    def log_path(self):
        """Kolibri's own log of this instance: where a failing sync says why."""
        return self.home / "logs" / "kolibri.txt"

    @property
    def lab_dir(self):
        """Where this lab keeps each command's output, inside the home."""
        return self.home / "sync-lab"

    @property
    def base_url(self):
        """:rtype: str"""
        if self.port is None:
            raise InstanceError(
                "{} has no port: it was never started".format(self.name)
            )
        return "http://{}:{}".format(LOCALHOST, self.port)

    @property
    def running(self):
        """:rtype: bool"""
        return self._server is not None and self._server.running()

    @property
    def pid(self):
        """The server process's pid, while it runs. :rtype: int|None"""
        return self._server.process.pid if self.running else None

    def env(self):
        """:rtype: dict"""
        env = child_environment(self.home)
        if self.thread_cpu_dir is not None:
            from .thread_cpu import DIR_ENV
            from .thread_cpu import SITE_DIR

            Path(self.thread_cpu_dir).mkdir(parents=True, exist_ok=True)
            env["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), env["PYTHONPATH"]])
            env[DIR_ENV] = str(self.thread_cpu_dir)
        return env

    # -- set-up -----------------------------------------------------------------

    def write_options(self):
        """
        Write ``options.ini``: listen on 127.0.0.1 only, no network discovery or
        pingback, the instance's port, and the ``[Sync]`` and other given options.
        """
        config = configparser.ConfigParser(interpolation=None)
        config.optionxform = str  # Kolibri's option names are upper case
        deployment = {
            "LISTEN_ADDRESS": LOCALHOST,
            "ZEROCONF_ENABLED": False,
            "DISABLE_PING": True,
        }
        if self.port is not None:
            deployment["HTTP_PORT"] = self.port
        sections = {"Deployment": deployment}
        if self.sync_options:
            sections["Sync"] = dict(self.sync_options)
        for section, values in self.options.items():
            sections.setdefault(section, {}).update(values)
        for section, values in sections.items():
            config[section] = {key: _ini_value(value) for key, value in values.items()}
        with open(self.home / "options.ini", "w") as options_file:
            config.write(options_file)

    def plugin_enabled(self):
        """
        Whether the home's ``plugins.json`` enables the plugin.

        :rtype: bool
        """
        try:
            with open(self.home / "plugins.json") as plugins_file:
                plugins = json.load(plugins_file)
        except FileNotFoundError:
            return False
        return PLUGIN in set(plugins.get("INSTALLED_PLUGINS", ())) - set(
            plugins.get("DISABLED_PLUGINS", ())
        )

    def prepare(self):
        """
        Write the options, and enable or disable the plugin as asked (a home copied
        from another may say otherwise); idempotent.
        """
        if self._prepared:
            return
        self.lab_dir.mkdir(exist_ok=True)
        self.write_options()
        if self.plugin != self.plugin_enabled():
            self.kolibri(
                "plugin", "enable" if self.plugin else "disable", PLUGIN, timeout=120
            )
        self._prepared = True

    def provision(self, facility, username, password, preset="formal"):
        """
        Migrate the databases and provision the device with a new facility whose
        super user is ``username``.

        :return: The facility, as :func:`sync_lab.harness.dataset.facility_info`
            describes it
        :rtype: dict
        """
        self.prepare()
        self.manage(
            "provisiondevice",
            "--facility",
            facility,
            "--superusername",
            username,
            "--superuserpassword",
            password,
            "--preset",
            preset,
            "--language_id",
            "en",
            "--noinput",
            skip_update=False,
            timeout=300,
        )
        return self.call("sync_lab.harness.dataset:facility_info")

    @classmethod
    def copy_of(cls, template, name, **kwargs):
        """
        A new instance whose home starts as a copy of ``template``'s, which must not
        be running: provisioning and generating data once and copying the result is
        much faster than doing it again. The copy's morango instance id differs from
        the template's, as its database path does.

        :type template: KolibriInstance
        :param kwargs: As for :class:`KolibriInstance`, except ``home``
        :rtype: KolibriInstance
        """
        if template.running:
            raise InstanceError(
                "{} is running: stop it before copying".format(template.name)
            )
        instance = cls(name, **kwargs)
        for entry in template.home.iterdir():
            if entry.name in _NOT_COPIED:
                continue
            if entry.is_dir():
                shutil.copytree(entry, instance.home / entry.name)
            else:
                shutil.copy2(entry, instance.home / entry.name)
        return instance

    def migrate(self):
        """Bring an unprovisioned home's databases up to date (a client's first step)."""
        self.prepare()
        self.manage("migrate", skip_update=False, timeout=300)

    # -- commands ---------------------------------------------------------------

    def kolibri(self, *args, timeout=600, check=True, env=None, label=None):
        """
        Run ``kolibri ARGS`` for this instance and wait for it.

        The combined output is kept in :attr:`lab_dir` as well as in the result.

        :param env: Extra environment variables for this command only
        :param label: A name for the output file; the command's first words by default
        :rtype: CommandResult
        :raises CommandFailed: if ``check`` and the command failed or timed out
        """
        args = [str(arg) for arg in args]
        command = [self.python, "-m", "kolibri"] + args
        if self.niceness:
            command = niced(command, self.niceness)
        child_env = self.env()
        child_env.update(env or {})
        self._command_count += 1
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        output_path = self.lab_dir / "{:03d}-{}.txt".format(
            self._command_count, _slug(label or " ".join(args[:3]))
        )
        started = time.monotonic()
        timed_out = False
        with open(output_path, "w+") as output:
            try:
                returncode = subprocess.run(
                    command,
                    cwd=str(self.home),
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                # subprocess.run has killed it
                timed_out, returncode = True, None
            output.seek(0)
            text = output.read()
        result = CommandResult(
            ["kolibri"] + args,
            returncode,
            time.monotonic() - started,
            text,
            timed_out=timed_out,
        )
        if check and not result.ok:
            raise CommandFailed(self, result)
        return result

    def manage(self, *args, skip_update=True, **kwargs):
        """
        Run ``kolibri manage ARGS``. ``skip_update`` leaves out Kolibri's upgrade and
        migration checks, which only a fresh home needs and which would otherwise
        run again, concurrently with the server, on every command.

        :rtype: CommandResult
        """
        prefix = ["manage", "--skip-update"] if skip_update else ["manage"]
        kwargs.setdefault("label", " ".join(str(arg) for arg in args[:2]))
        return self.kolibri(*(prefix + list(args)), **kwargs)

    def call(self, func, timeout=600, **kwargs):
        """
        Call a module-level function inside this instance (Django set up with this
        home's database and plugins) and return its result.

        :param func: The function, or its ``"module:name"`` path; it must be
            importable from this checkout or the installed packages
        :param kwargs: JSON-serializable keyword arguments
        :return: The function's return value, through JSON
        """
        path = import_path(func)
        request = json.dumps({"func": path, "kwargs": kwargs})
        result = self.manage(
            "shell",
            "-c",
            "from sync_lab.harness.instances import serve_call; serve_call()",
            env={_CALL_ENV: request},
            timeout=timeout,
            label="call {}".format(path.rsplit(":", 1)[-1]),
        )
        for line in reversed(result.output.splitlines()):
            if line.startswith(_RESULT_MARKER):
                return json.loads(line[len(_RESULT_MARKER) :])
        raise InstanceError(
            "{}: {} printed no result; last output:\n{}".format(
                self.name, path, result.tail()
            )
        )

    # -- the server -------------------------------------------------------------

    def start(self, timeout=120, attempts=3):
        """
        Start ``kolibri start --foreground``: the HTTP server and the job workers,
        in one process on 127.0.0.1, and wait until it answers a public API
        request (mirakuru's :class:`~mirakuru.HTTPExecutor` polls it).

        :raises ServerFailed: if it exits or does not answer within ``timeout``
        """
        if self.running:
            return
        self.prepare()
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            self.write_options()
            self._server_output = self.lab_dir / "server-{}.txt".format(self.port)
            with open(self._server_output, "w") as output:
                self._server = LabServer(
                    self.server_command(),
                    self.env(),
                    self.home,
                    output,
                    timeout,
                    url=self.base_url + _READY_PATH,
                )
                _running.add(self)
                try:
                    self._server.start()
                    logger.debug(
                        "%s: server pid %s on port %s", self.name, self.pid, self.port
                    )
                    return
                except ExecutorError as e:
                    # mirakuru found something on the port before starting, or
                    # Kolibri found it taken: another process was quicker
                    port_taken = isinstance(e, AlreadyRunning) or (
                        "occupied" in self.server_output_tail().lower()
                    )
                    self.stop()
                    if not port_taken or attempt == attempts:
                        raise ServerFailed(
                            "{}: the server did not answer ({}); output:\n{}".format(
                                self.name, e, self.server_output_tail()
                            )
                        )

    def server_command(self):
        """:return: The command that serves this instance on :attr:`port`"""
        return [self.python, "-m", "kolibri", "start", "--foreground"] + [
            "--port",
            str(self.port),
        ]

    def log_tail(self, lines=_OUTPUT_TAIL_LINES):
        """
        The end of Kolibri's log for this instance: a failing sync's server side.

        :rtype: str
        """
        try:
            with open(self.log_path, errors="replace") as log:
                return "\n".join(log.read().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def server_output_tail(self, lines=_OUTPUT_TAIL_LINES):
        """:rtype: str"""
        if self._server_output is None or not self._server_output.exists():
            return ""
        with open(self._server_output) as output:
            return "\n".join(output.read().splitlines()[-lines:])

    def stop(self):
        """
        Stop the server by its own pid: SIGTERM, then SIGKILL if it has not exited
        within the start's timeout.
        """
        server, self._server = self._server, None
        _running.discard(self)
        if server is not None:
            server.stop_quietly()
            logger.debug("%s: server stopped", self.name)

    def kill(self):
        """
        SIGKILL the server process by its pid, and forget it, so that
        :meth:`start` starts a new one.

        :return: The killed process's pid
        :rtype: int
        """
        pid = self.pid
        if pid is None:
            raise InstanceError("{} is not running".format(self.name))
        server, self._server = self._server, None
        server.kill(sig=signal.SIGKILL)
        return pid

    def cleanup(self):
        """Stop the server and remove the home, unless it is to be kept."""
        try:
            self.stop()
        finally:
            if not self.keep_home:
                shutil.rmtree(self.home, ignore_errors=True)

    # -- what the lab asks of an instance ---------------------------------------

    def sync(
        self,
        base_url,
        facility_id,
        username,
        password,
        pull=True,
        push=True,
        timeout=900,
        check=True,
        chunk_size=None,
    ):
        """
        Sync the facility with the server at ``base_url``, as this instance's client,
        with Kolibri's own ``sync`` command.

        :rtype: CommandResult
        """
        if not (pull or push):
            raise ValueError("a sync must pull, push or both")
        args = [
            "sync",
            "--baseurl",
            base_url,
            "--facility",
            facility_id,
            "--username",
            username,
            "--password",
            password,
            "--noninteractive",
        ]
        if not push:
            args.append("--no-push")
        if not pull:
            args.append("--no-pull")
        if chunk_size:
            args += ["--chunk-size", str(chunk_size)]
        label = "sync " + ("pull" if not push else "push" if not pull else "both")
        return self.manage(*args, timeout=timeout, check=check, label=label)


class _LabProcess:
    """
    A process of the lab, started and stopped by mirakuru in a session of its own
    (a Ctrl-C meant for the lab is the lab's to handle), its output going to a
    file. Its environment is exactly the one given, as :func:`child_environment`
    builds it, where mirakuru would start from the lab's own.
    """

    def __init__(self, command, env, cwd, output, timeout, **kwargs):
        self._env = env
        super().__init__(
            command,
            cwd=str(cwd),
            timeout=timeout,
            sleep=0.25,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            **kwargs,
        )

    @property
    def envvars(self):
        return dict(self._env, **{ENV_UUID: self._uuid})

    def stop_quietly(self):
        """Stop the process (SIGTERM, then SIGKILL); how it exited is no concern."""
        try:
            self.stop()
        except ProcessExitedWithError:
            pass


class LabServer(_LabProcess, HTTPExecutor):
    """A server process, ready once its ``url`` answers a GET with 200."""

    def __init__(self, command, env, cwd, output, timeout, url):
        super().__init__(
            command,
            env,
            cwd,
            output,
            timeout,
            url=url,
            status=200,
            method="GET",
            request_timeout=5,
        )


class LabService(_LabProcess, Executor):
    """A process without a port, ready once its output says ``ready_text``."""

    def __init__(self, command, env, cwd, output, timeout, ready_text):
        super().__init__(command, env, cwd, output, timeout)
        self._output_path = output.name
        self._ready_text = ready_text

    def pre_start_check(self):
        return False

    def after_start_check(self):
        with open(self._output_path, errors="replace") as output:
            return self._ready_text in output.read()


def _ini_value(value):
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(item) for item in value)
    return str(value)


def _slug(text):
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:40] or "command"


def running_instances():
    """
    The instances whose server this process started and has not stopped yet.

    :rtype: list
    """
    return list(_running)


@atexit.register
def _stop_running_servers():
    for instance in list(_running):
        instance.stop()


def serve_call():
    """
    The inside half of :meth:`KolibriInstance.call`, run by ``kolibri manage shell``:
    call the function named in the environment and print its result on one line.
    """
    request = json.loads(os.environ[_CALL_ENV])
    module_name, _, func_name = request["func"].partition(":")
    func = importlib.import_module(module_name)
    for attribute in func_name.split("."):
        func = getattr(func, attribute)
    result = func(**request["kwargs"])
    sys.stdout.write(_RESULT_MARKER + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
