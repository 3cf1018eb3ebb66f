"""
A Kolibri server in the shape Debian's ``kolibri-server`` package gives it: nginx
in front, uwsgi running Kolibri's WSGI application in several processes behind it,
and the job workers in a process of their own (``kolibri services``). All three
share the instance's home, so its databases and its job storage.

:class:`UwsgiKolibriInstance` starts the three on 127.0.0.1, each by its own pid
(SIGTERM, then SIGKILL; stopped at the interpreter's exit like every server of the
lab), with every file they write (configuration, logs, pid file, nginx's
temporary files) in the instance's lab folder: nothing under ``/etc/nginx`` is
read or written and no privileged port is needed.

The settings follow kolibri-server's ``uwsgi.ini`` and the nginx site its
``kolibri_server_setup.py`` writes (learningequality/kolibri-server); where the lab
differs, :data:`UWSGI_SETTINGS` and :func:`nginx_config` say why. In short:

- uwsgi runs a fixed 4 processes (kolibri-server lets the ``spare`` cheaper
  algorithm run 2 to 16, 3 at first), one thread each as there (its
  ``enable-threads`` lets Python threads run, it adds no request threads), with
  its ``master``, ``harakiri = 5000``, ``limit-as = 1024``, ``reload-on-rss =
  512``, ``max-requests``, ``buffer-size`` and the rest; it loads
  ``kolibri.deployment.default.wsgi:application`` once in the master, before
  forking the workers, as kolibri-server does (no ``lazy-apps``). It listens with
  the uwsgi protocol on a TCP port of 127.0.0.1, where kolibri-server uses a unix
  socket in ``/tmp``.
- nginx passes every request to it with ``uwsgi_pass`` and the standard uwsgi
  parameters, as kolibri-server's site does, which leaves nginx's defaults in
  place: request bodies up to 1 MB (``client_max_body_size``), a 60 s read
  timeout (``uwsgi_read_timeout``) and buffered answers (``uwsgi_buffering``).
  The lab writes them out, so a test or a bench can see and change them.

uwsgi comes from the interpreter's own environment (``pip install uwsgi``, which
``make venv`` does for the default line), nginx from the system (Debian's
``nginx`` package); :func:`missing_programs` says what is missing.
"""

import functools
import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from collections import namedtuple
from pathlib import Path

from mirakuru.exceptions import AlreadyRunning
from mirakuru.exceptions import ExecutorError

from . import instances
from .instances import _READY_PATH
from .instances import LOCALHOST
from .instances import InstanceError
from .instances import LabServer
from .instances import LabService
from .instances import ServerFailed
from .instances import free_port
from .split import SplitKolibriInstance

__all__ = [
    "UWSGI_PROCESSES",
    "UWSGI_SETTINGS",
    "NGINX_SETTINGS",
    "UWSGI_RECYCLE_MARKERS",
    "AccessLogEntry",
    "PeakWatch",
    "ProcessPeak",
    "Recycling",
    "UwsgiKolibriInstance",
    "missing_programs",
    "nginx_config",
    "nginx_program",
    "read_access_log",
    "recycle_lines",
    "uwsgi_ini",
    "uwsgi_program",
]

#: Kolibri's WSGI application, as kolibri-server's ``uwsgi.ini`` names it.
WSGI_MODULE = "kolibri.deployment.default.wsgi:application"

#: uwsgi's worker processes.
UWSGI_PROCESSES = 4

#: uwsgi's settings, after kolibri-server's ``uwsgi.ini``: the values are its own
#: unless the comment says otherwise. The socket, the processes and the
#: interpreter's home are added per instance (see :func:`uwsgi_ini`).
UWSGI_SETTINGS = OrderedDict(
    (
        ("master", "true"),
        # seconds a request may run before the master kills its worker
        ("harakiri", 5000),
        ("enable-threads", "true"),
        # each worker pinned to one CPU, in turn
        ("cpu-affinity", 1),
        ("listen", 100),
        # megabytes of address space per process, and of resident memory after
        # which a worker is replaced once its request is done
        ("limit-as", 1024),
        ("reload-on-rss", 512),
        ("no-orphans", "true"),
        ("reload-mercy", 4),
        ("max-requests", 1000),
        ("max-worker-lifetime", 3600),
        ("worker-reload-mercy", 60),
        ("vacuum", "true"),
        ("module", WSGI_MODULE),
        ("buffer-size", 32768),
        ("wsgi-disable-file-wrapper", "true"),
        ("single-interpreter", "true"),
        # SIGTERM ends uwsgi (its default would reload it)
        ("die-on-term", "true"),
        ("need-app", "true"),
        ("disable-logging", "true"),
        ("log-4xx", "true"),
        ("log-5xx", "true"),
        ("py-callos-afterfork", "true"),
    )
)

#: nginx's settings in front of uwsgi. kolibri-server's site sets none of these,
#: so nginx's defaults apply there; the lab writes them out.
NGINX_SETTINGS = OrderedDict(
    (
        ("client_max_body_size", "1m"),
        ("uwsgi_read_timeout", "60s"),
        ("uwsgi_send_timeout", "60s"),
        ("uwsgi_connect_timeout", "60s"),
        ("uwsgi_buffering", "on"),
    )
)

#: What nginx sends uwsgi for each request: the parameters a WSGI application
#: reads from its environ, from nginx's variables.
_UWSGI_PARAMS = (
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("REQUEST_URI", "$request_uri"),
    ("PATH_INFO", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https if_not_empty"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
)

_NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

#: What uwsgi 2.0 logs when a worker ends and another takes its place: a worker
#: leaving after its request for ``max-requests``, ``reload-on-as`` or
#: ``reload-on-rss`` (its log does not say which), the master reaping it and
#: starting another, a worker that died or was killed, harakiri and
#: ``max-worker-lifetime``.
UWSGI_RECYCLE_MARKERS = (
    "The work of process",
    "killed successfully",
    "Respawned uWSGI worker",
    "DAMN ! worker",
    "HARAKIRI ON WORKER",
    "lifetime reached",
)

#: One process of the deployment and the most resident memory it has used so far.
ProcessPeak = namedtuple("ProcessPeak", ("role", "pid", "peak_rss_kb"))

#: One request in nginx's access log: what was asked, the status, how long nginx
#: (``request_time``) and uwsgi (``upstream_time``, ``None`` if nginx answered
#: alone) took, in seconds, and the request's size in bytes, headers and body
#: (``request_length``: a push's chunk meets ``client_max_body_size`` there).
AccessLogEntry = namedtuple(
    "AccessLogEntry",
    ("method", "path", "status", "request_time", "upstream_time", "request_length"),
)


#: The processes that came and went while a :class:`PeakWatch` watched, as
#: ``(role, pid)`` pairs, and uwsgi's log lines about ending and starting workers.
Recycling = namedtuple("Recycling", ("gone", "new", "log_lines"))


def uwsgi_program(python=None):
    """
    The uwsgi that ``pip install uwsgi`` put beside ``python`` (this interpreter by
    default): its Python is built in, that interpreter's.

    :rtype: pathlib.Path|None
    """
    program = Path(python or sys.executable).parent / "uwsgi"
    return program if os.access(str(program), os.X_OK) else None


def nginx_program():
    """
    nginx, on the path or where Debian installs it (``/usr/sbin``, which is not
    on every user's path).

    :rtype: pathlib.Path|None
    """
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return Path(found) if found else None


def missing_programs(python=None):
    """
    What this topology needs and is not installed, with how to install it.

    :return: One line per missing program; empty if nothing is missing
    :rtype: list
    """
    missing = []
    if uwsgi_program(python) is None:
        missing.append(
            "uwsgi is not installed beside {} (`pip install uwsgi`, as "
            "`make venv` does)".format(python or sys.executable)
        )
    if nginx_program() is None:
        missing.append("nginx is not installed (`apt-get install nginx`)")
    return missing


@functools.lru_cache(maxsize=None)
def _python_prefix(python):
    """``sys.prefix`` of ``python``: its virtual environment, if it runs in one."""
    result = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def uwsgi_ini(port, processes=UWSGI_PROCESSES, home=None, settings=None):
    """
    The text of uwsgi's ini file.

    :param port: The 127.0.0.1 port of uwsgi's socket (uwsgi protocol)
    :param processes: How many worker processes
    :param home: The virtual environment of the Python uwsgi embeds, whose
        packages (Kolibri, this plugin) it is to import
    :param settings: Settings to add or change, over :data:`UWSGI_SETTINGS`
    :rtype: str
    """
    values = OrderedDict(
        (
            # kolibri-server: socket = /tmp/kolibri_uwsgi.sock
            ("socket", "{}:{}".format(LOCALHOST, port)),
            # kolibri-server: workers = 16 with the spare cheaper algorithm
            ("processes", processes),
        )
    )
    if home:
        values["home"] = home
    values.update(UWSGI_SETTINGS)
    values.update(settings or {})
    lines = ["[uwsgi]"]
    lines.extend("{} = {}".format(key, value) for key, value in values.items())
    return "\n".join(lines) + "\n"


def nginx_config(port, uwsgi_port, lab_dir, settings=None):
    """
    The text of nginx's configuration: the main settings of Debian's
    ``/etc/nginx/nginx.conf`` that concern a reverse proxy (``worker_processes
    auto``, 768 connections per worker, ``sendfile``, ``tcp_nopush``, ``gzip``),
    and kolibri-server's site: every path to uwsgi with the uwsgi parameters, the
    favicon answered by nginx itself. Its page for a 502 (uwsgi not up yet) is left
    out: the lab has no error pages to show.

    :param port: nginx's port on 127.0.0.1
    :param uwsgi_port: uwsgi's socket on 127.0.0.1
    :param lab_dir: Where the pid file, the logs and the temporary files go
    :param settings: nginx directives to add or change, over
        :data:`NGINX_SETTINGS` (e.g. ``{"uwsgi_read_timeout": "10s"}``)
    :rtype: str
    """
    lab_dir = Path(lab_dir)
    values = OrderedDict(NGINX_SETTINGS)
    values.update(settings or {})
    main = ["daemon off;"]
    if os.geteuid() == 0:
        # its workers would run as nobody, who may not enter the lab's folders
        main.append(
            "user {} {};".format(
                pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
            )
        )
    main += [
        "worker_processes auto;",
        "pid {};".format(lab_dir / "nginx.pid"),
        "error_log {} info;".format(lab_dir / "nginx-error.log"),
        "events {",
        "    worker_connections 768;",
        "}",
    ]
    http = [
        "sendfile on;",
        "tcp_nopush on;",
        "types_hash_max_size 2048;",
        "default_type application/octet-stream;",
        "gzip on;",
    ]
    http += [
        "{}_temp_path {};".format(kind, lab_dir / "nginx-temp" / kind)
        for kind in _NGINX_TEMP_KINDS
    ]
    # what kolibri-server logs of each request: the combined format, then the
    # time nginx took, the time uwsgi took and whether the connection was
    # pipelined; and the request's size, which kolibri-server does not log
    http += [
        "log_format lab_timed '$remote_addr - $remote_user [$time_local] "
        '"$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" '
        "$request_time $upstream_response_time $pipe $request_length';",
        "access_log {} lab_timed;".format(lab_dir / "nginx-access.log"),
    ]
    server = ["listen {}:{};".format(LOCALHOST, port)]
    server += ["{} {};".format(key, value) for key, value in values.items()]
    server += [
        "location = /favicon.ico {",
        "    empty_gif;",
        "}",
        "location / {",
    ]
    server += [
        "    uwsgi_param {} {};".format(name, value) for name, value in _UWSGI_PARAMS
    ]
    server += [
        "    uwsgi_pass {}:{};".format(LOCALHOST, uwsgi_port),
        # as in kolibri-server's site; it concerns proxy_pass's cache only
        "    proxy_ignore_headers Vary;",
        "}",
    ]
    lines = ["# written by sync_lab.harness.uwsgi_server"] + main + ["http {"]
    lines += ["    " + line for line in http]
    lines += ["    server {"]
    lines += ["        " + line for line in server]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def read_access_log(path):
    """
    The requests in an access log that :func:`nginx_config` configured.

    :rtype: list[AccessLogEntry]
    """
    entries = []
    try:
        with open(path, errors="replace") as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return entries
    for line in lines:
        # address, user and time "request" status bytes "referer" "agent" times
        # and size
        parts = line.split('"')
        if len(parts) < 7:
            continue
        request = parts[1].split()
        status = parts[2].split()
        times = parts[-1].split()
        try:
            upstream = times[1].rstrip(",")
            entries.append(
                AccessLogEntry(
                    request[0] if request else "",
                    request[1] if len(request) > 1 else "",
                    int(status[0]),
                    float(times[0]),
                    None if upstream == "-" else float(upstream),
                    int(times[3]) if len(times) > 3 else None,
                )
            )
        except (IndexError, ValueError):
            continue
    return entries


def recycle_lines(text):
    """
    The lines of uwsgi's log about a worker ending or another taking its place
    (see :data:`UWSGI_RECYCLE_MARKERS`).

    :rtype: list
    """
    return [
        line
        for line in text.splitlines()
        if any(marker in line for marker in UWSGI_RECYCLE_MARKERS)
    ]


def child_pids(pid):
    """
    The pids of ``pid``'s children, from ``/proc``.

    :rtype: list
    """
    children = set()
    try:
        tasks = os.listdir("/proc/{}/task".format(pid))
    except OSError:
        return []
    for task in tasks:
        try:
            with open("/proc/{}/task/{}/children".format(pid, task)) as listed:
                children.update(int(child) for child in listed.read().split())
        except OSError:
            # gone meanwhile, or a kernel without the children file
            continue
    return sorted(children)


def peak_rss_kb(pid):
    """
    The most resident memory ``pid`` has used (``VmHWM`` of
    ``/proc/<pid>/status``), in kB.

    :rtype: int|None
    """
    try:
        with open("/proc/{}/status".format(pid)) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakWatch:
    """
    Each process of a running :class:`UwsgiKolibriInstance` and its peak resident
    memory (``VmHWM``), sampled every ``interval`` seconds in a thread while the
    ``with`` block runs and once more at its end. A process that ends meanwhile
    (a uwsgi worker that uwsgi replaced) keeps its peak as last sampled, and
    :meth:`recycling` says which processes came and went.
    """

    def __init__(self, server, interval=0.5):
        self.server = server
        self.interval = interval
        self.first_pids = OrderedDict()
        self.last_pids = OrderedDict()
        self._peaks = OrderedDict()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = None

    def sample(self):
        """Read each running process's peak once more; :return: the pids by role."""
        pids = self.server.pids()
        for role, role_pids in pids.items():
            for pid in role_pids:
                peak = peak_rss_kb(pid)
                if peak is None:
                    continue
                with self._lock:
                    known = self._peaks.get(pid)
                    if known is None or peak > known.peak_rss_kb:
                        self._peaks[pid] = ProcessPeak(role, pid, peak)
        return pids

    def _run(self):
        while not self._stopping.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.first_pids = self.sample()
        self._thread = threading.Thread(
            target=self._run, name="peak-watch-" + self.server.name, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        self._thread.join()
        self.last_pids = self.sample()

    def peaks(self):
        """
        Every process seen, with the highest peak sampled.

        :rtype: list[ProcessPeak]
        """
        with self._lock:
            return list(self._peaks.values())

    def recycling(self):
        """
        The processes seen at the start and gone at the end, those that were not
        there at the start, and uwsgi's log lines about replacing workers.

        :rtype: Recycling
        """
        first = {(role, pid) for role, pids in self.first_pids.items() for pid in pids}
        last = {(role, pid) for role, pids in self.last_pids.items() for pid in pids}
        with self._lock:
            seen = {(peak.role, peak.pid) for peak in self._peaks.values()}
        return Recycling(
            sorted(seen - last),
            sorted(seen - first),
            recycle_lines(self.server.uwsgi_log_text()),
        )


class UwsgiKolibriInstance(SplitKolibriInstance):
    """
    A :class:`~sync_lab.harness.split.SplitKolibriInstance` whose :meth:`start`
    starts ``kolibri services`` (the job workers), uwsgi with Kolibri's WSGI
    application and nginx in front of it, in that order; :attr:`base_url` is
    nginx's. The worker can be killed and started again on its own
    (:meth:`kill_worker`, :meth:`start_worker`), and so can a uwsgi worker
    (:meth:`kill_uwsgi_worker`; uwsgi's master starts another).
    """

    def __init__(
        self,
        *args,
        processes=UWSGI_PROCESSES,
        uwsgi_settings=None,
        nginx_settings=None,
        **kwargs,
    ):
        """
        :param processes: uwsgi's worker processes
        :param uwsgi_settings: uwsgi settings over :data:`UWSGI_SETTINGS`
        :param nginx_settings: nginx directives over :data:`NGINX_SETTINGS`
        :param args: As for :class:`~sync_lab.harness.instances.KolibriInstance`
        """
        super().__init__(*args, **kwargs)
        self.processes = processes
        self.uwsgi_settings = dict(uwsgi_settings or {})
        self.nginx_settings = dict(nginx_settings or {})
        self.uwsgi_port = None
        self._uwsgi = None
        self._uwsgi_output = None
        self._uwsgi_count = 0

    # -- paths ------------------------------------------------------------------

    @property
    def uwsgi_ini_path(self):
        return self.lab_dir / "uwsgi.ini"

    @property
    def nginx_conf_path(self):
        return self.lab_dir / "nginx.conf"

    @property
    def uwsgi_log_path(self):
        """uwsgi's own log (its output) of the latest start. :rtype: pathlib.Path|None"""
        return self._uwsgi_output

    @property
    def nginx_error_log_path(self):
        return self.lab_dir / "nginx-error.log"

    @property
    def nginx_access_log_path(self):
        return self.lab_dir / "nginx-access.log"

    # -- the processes ----------------------------------------------------------

    @property
    def uwsgi_running(self):
        """:rtype: bool"""
        return self._uwsgi is not None and self._uwsgi.running()

    @property
    def nginx_pid(self):
        """nginx's master process. :rtype: int|None"""
        return self.pid

    @property
    def nginx_worker_pids(self):
        """:rtype: list"""
        return child_pids(self.pid) if self.pid else []

    @property
    def uwsgi_pid(self):
        """uwsgi's master process. :rtype: int|None"""
        return self._uwsgi.process.pid if self.uwsgi_running else None

    @property
    def uwsgi_worker_pids(self):
        """
        uwsgi's worker processes right now: the master's children.

        :rtype: list
        """
        return child_pids(self.uwsgi_pid) if self.uwsgi_pid else []

    @property
    def services_pid(self):
        """The ``kolibri services`` process (the job workers). :rtype: int|None"""
        return self.worker_pid

    def pids(self):
        """
        Every process of the deployment, by role.

        :rtype: dict
        """
        return OrderedDict(
            (
                ("services", [self.services_pid] if self.services_pid else []),
                ("uwsgi master", [self.uwsgi_pid] if self.uwsgi_pid else []),
                ("uwsgi worker", self.uwsgi_worker_pids),
                ("nginx master", [self.nginx_pid] if self.nginx_pid else []),
                ("nginx worker", self.nginx_worker_pids),
            )
        )

    def process_peaks(self):
        """
        Each running process's peak resident memory so far (``VmHWM``); a uwsgi
        worker that uwsgi replaced took its peak with it.

        :rtype: list[ProcessPeak]
        """
        peaks = []
        for role, pids in self.pids().items():
            for pid in pids:
                peak = peak_rss_kb(pid)
                if peak is not None:
                    peaks.append(ProcessPeak(role, pid, peak))
        return peaks

    # -- starting and stopping --------------------------------------------------

    def start(self, timeout=120, attempts=3):
        """
        Start ``kolibri services``, then uwsgi, then nginx, and wait until a
        public API request through nginx is answered.

        :raises ServerFailed: if uwsgi or nginx exits or does not answer within
            ``timeout``
        :raises InstanceError: if the job workers did not start
        """
        if self.running:
            return
        missing = missing_programs(self.python)
        if missing:
            raise InstanceError("{}: {}".format(self.name, "; ".join(missing)))
        self.prepare()
        # Kolibri's idea of its own port is where its users reach it: nginx's,
        # known to every process from the start
        self.port = free_port()
        self.write_options()
        self.start_worker(timeout=timeout)
        if not self.uwsgi_running:
            self._start_uwsgi(timeout, attempts)
        self._start_nginx(timeout, attempts)

    def _start_uwsgi(self, timeout, attempts):
        for attempt in range(1, attempts + 1):
            self.uwsgi_port = free_port()
            while self.uwsgi_port == self.port:
                self.uwsgi_port = free_port()
            self.uwsgi_ini_path.write_text(
                uwsgi_ini(
                    self.uwsgi_port,
                    processes=self.processes,
                    home=_python_prefix(self.python),
                    settings=self.uwsgi_settings,
                )
            )
            self._uwsgi_count += 1
            self._uwsgi_output = self.lab_dir / "uwsgi-{}.log".format(self._uwsgi_count)
            program = uwsgi_program(self.python)
            with open(self._uwsgi_output, "w") as output:
                self._uwsgi = LabService(
                    [str(program), "--ini", str(self.uwsgi_ini_path)],
                    self.env(),
                    self.home,
                    output,
                    timeout,
                    # the master forks the workers once the application has loaded
                    ready_text="spawned uWSGI worker {} (".format(self.processes),
                )
                instances._running.add(self)
                try:
                    self._uwsgi.start()
                    return
                except ExecutorError as e:
                    self._uwsgi = None
                    log = self._uwsgi_output.read_text(errors="replace")
                    if "Address already in use" not in log or attempt == attempts:
                        raise ServerFailed(
                            "{}: uwsgi did not start ({}); its log:\n{}".format(
                                self.name, e, log[-6000:]
                            )
                        )

    def _start_nginx(self, timeout, attempts):
        program = nginx_program()
        for temp in _NGINX_TEMP_KINDS:
            (self.lab_dir / "nginx-temp" / temp).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                # another process took the port meanwhile
                self.port = free_port()
                while self.port == self.uwsgi_port:
                    self.port = free_port()
                self.write_options()
            self.nginx_conf_path.write_text(
                nginx_config(
                    self.port, self.uwsgi_port, self.lab_dir, self.nginx_settings
                )
            )
            self._server_output = self.lab_dir / "nginx-{}.txt".format(self.port)
            command = [
                str(program),
                "-p",
                str(self.lab_dir),
                "-c",
                str(self.nginx_conf_path),
                # before it has read the configuration, nginx logs here
                "-e",
                str(self.nginx_error_log_path),
            ]
            with open(self._server_output, "w") as output:
                self._server = LabServer(
                    command,
                    self.env(),
                    self.home,
                    output,
                    timeout,
                    url=self.base_url + _READY_PATH,
                )
                instances._running.add(self)
                try:
                    self._server.start()
                    return
                except ExecutorError as e:
                    port_taken = isinstance(e, AlreadyRunning) or (
                        "Address already in use" in self._nginx_output()
                    )
                    self._stop_nginx()
                    if not port_taken or attempt == attempts:
                        raise ServerFailed(
                            "{}: nginx did not answer ({}); its output:\n{}\n"
                            "uwsgi's log:\n{}".format(
                                self.name,
                                e,
                                self._nginx_output(),
                                self.uwsgi_log_tail(),
                            )
                        )

    def _nginx_output(self):
        text = self.server_output_tail()
        try:
            text += "\n" + self.nginx_error_log_path.read_text(errors="replace")[-3000:]
        except OSError:
            pass
        return text

    def access_log(self):
        """
        Every request nginx has logged for this instance so far.

        :rtype: list[AccessLogEntry]
        """
        return read_access_log(self.nginx_access_log_path)

    def uwsgi_log_text(self):
        """uwsgi's log of the latest start. :rtype: str"""
        if self._uwsgi_output is None or not self._uwsgi_output.exists():
            return ""
        return self._uwsgi_output.read_text(errors="replace")

    def uwsgi_log_tail(self, lines=40):
        """:rtype: str"""
        return "\n".join(self.uwsgi_log_text().splitlines()[-lines:])

    def watch_peaks(self, interval=0.5):
        """
        :return: A :class:`PeakWatch` of this instance, to use as a context
            manager while it runs
        """
        return PeakWatch(self, interval)

    def kill_uwsgi_worker(self, pid=None):
        """
        SIGKILL one of uwsgi's workers (the first by default); uwsgi's master
        starts another in its place.

        :return: The killed pid
        :rtype: int
        """
        workers = self.uwsgi_worker_pids
        if pid is None:
            if not workers:
                raise InstanceError("{} has no uwsgi worker".format(self.name))
            pid = workers[0]
        elif pid not in workers:
            raise InstanceError(
                "{}: {} is not one of uwsgi's workers {}".format(
                    self.name, pid, workers
                )
            )
        os.kill(pid, signal.SIGKILL)
        return pid

    def _stop_nginx(self):
        server, self._server = self._server, None
        if server is not None:
            server.stop_quietly()

    def stop_uwsgi(self):
        uwsgi, self._uwsgi = self._uwsgi, None
        if uwsgi is not None:
            uwsgi.stop_quietly()

    def stop(self):
        """Stop nginx, uwsgi and the job workers, in that order, each by its pid."""
        try:
            self._stop_nginx()
            self.stop_uwsgi()
        finally:
            # the worker, and forgetting the instance at exit
            super().stop()
