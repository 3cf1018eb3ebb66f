"""
The ways the lab can run a server, by name, for the demo's ``--server`` option:

- ``start``: ``kolibri start --foreground``, the HTTP server and the job workers
  in one process (:class:`~sync_lab.harness.instances.KolibriInstance`);
- ``split``: Kolibri's WSGI application served by cheroot in one process, and
  ``kolibri services`` in another
  (:class:`~sync_lab.harness.split.SplitKolibriInstance`);
- ``uwsgi``: as Debian's kolibri-server runs it, nginx in front of uwsgi's
  processes, and ``kolibri services``
  (:class:`~sync_lab.harness.uwsgi_server.UwsgiKolibriInstance`).
"""

from collections import OrderedDict

from .instances import KolibriInstance
from .split import SplitKolibriInstance
from .uwsgi_server import UWSGI_PROCESSES
from .uwsgi_server import UwsgiKolibriInstance
from .uwsgi_server import missing_programs

__all__ = [
    "DEFAULT_SERVER",
    "SERVERS",
    "describe_processes",
    "missing_for",
    "peak_rss_line",
    "process_peaks_line",
    "recycling_line",
    "server_root_pids",
    "start_server",
]

#: Each way to run a server: its instance class and what it runs.
SERVERS = OrderedDict(
    (
        (
            "start",
            (
                KolibriInstance,
                "kolibri start: HTTP server and job workers in one process",
            ),
        ),
        (
            "split",
            (
                SplitKolibriInstance,
                "Kolibri's WSGI app in one process (cheroot), kolibri services in another",
            ),
        ),
        (
            "uwsgi",
            (
                UwsgiKolibriInstance,
                "nginx -> uwsgi ({} processes) with Kolibri's WSGI app, kolibri "
                "services beside them".format(UWSGI_PROCESSES),
            ),
        ),
    )
)
DEFAULT_SERVER = "start"


def missing_for(server):
    """
    What the way of running ``server`` needs and is not installed.

    :param server: A name in :data:`SERVERS`
    :rtype: list
    """
    return missing_programs() if server == "uwsgi" else []


def start_server(server):
    """
    Start ``server`` with its job workers, however it runs them: a split server's
    worker process is started beside its HTTP process.

    :type server: sync_lab.harness.instances.KolibriInstance
    """
    server.start()
    if isinstance(server, SplitKolibriInstance):
        server.start_worker()


def describe_processes(server):
    """
    The server's processes, in a line.

    :type server: sync_lab.harness.instances.KolibriInstance
    :rtype: str
    """
    if isinstance(server, UwsgiKolibriInstance):
        return "; ".join(
            "{} {}".format(role, ",".join(str(pid) for pid in pids) or "-")
            for role, pids in server.pids().items()
        )
    if isinstance(server, SplitKolibriInstance):
        return "HTTP {}; services {}".format(server.pid, server.worker_pid)
    return "pid {}".format(server.pid)


def server_root_pids(server):
    """
    The processes the server's deployment started: the HTTP server, and its job
    workers' process or uwsgi's and nginx's masters where they have their own.

    :type server: sync_lab.harness.instances.KolibriInstance
    :rtype: list
    """
    if isinstance(server, UwsgiKolibriInstance):
        return [pid for pids in server.pids().values() for pid in pids]
    if isinstance(server, SplitKolibriInstance):
        return [pid for pid in (server.pid, server.worker_pid) if pid]
    return [server.pid] if server.pid else []


def peak_rss_line(peaks):
    """
    Peak resident memory by role, in a line: ``services 104 MB; uwsgi worker 4 x
    up to 101 MB, 402 MB together; ...``.

    :param peaks: :class:`~sync_lab.harness.uwsgi_server.ProcessPeak` objects
    :rtype: str
    """
    roles = OrderedDict()
    for peak in peaks:
        roles.setdefault(peak.role, []).append(peak.peak_rss_kb / 1024.0)
    parts = []
    for role, sizes in roles.items():
        if len(sizes) == 1:
            parts.append("{} {:.0f} MB".format(role, sizes[0]))
        else:
            parts.append(
                "{} {} x up to {:.0f} MB, {:.0f} MB together".format(
                    role, len(sizes), max(sizes), sum(sizes)
                )
            )
    return "; ".join(parts) or "-"


def process_peaks_line(peaks, gone=()):
    """
    Each process's peak resident memory, in a line: ``services 101 104 MB; uwsgi
    worker 103 120 MB, 104 98 MB (gone); ...``.

    :param peaks: :class:`~sync_lab.harness.uwsgi_server.ProcessPeak` objects
    :param gone: ``(role, pid)`` pairs of processes that had ended, whose peak is
        the last one sampled
    :rtype: str
    """
    gone = {pid for _, pid in gone}
    roles = OrderedDict()
    for peak in peaks:
        roles.setdefault(peak.role, []).append(
            "{} {:.0f} MB{}".format(
                peak.pid,
                peak.peak_rss_kb / 1024.0,
                " (gone)" if peak.pid in gone else "",
            )
        )
    return (
        "; ".join(
            "{} {}".format(role, ", ".join(items)) for role, items in roles.items()
        )
        or "-"
    )


def recycling_line(recycling):
    """
    Whether uwsgi replaced a process, in a line.

    :param recycling: :class:`~sync_lab.harness.uwsgi_server.Recycling`
    :rtype: str
    """
    if not (recycling.gone or recycling.new or recycling.log_lines):
        return "no"

    def pids(pairs):
        return ", ".join("{} {}".format(role, pid) for role, pid in pairs) or "none"

    return "YES: gone {}; new {}; uwsgi's log: {}".format(
        pids(recycling.gone),
        pids(recycling.new),
        " | ".join(line.strip() for line in recycling.log_lines) or "nothing",
    )
