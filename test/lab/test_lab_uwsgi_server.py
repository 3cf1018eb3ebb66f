"""
The configuration the uwsgi topology writes, and what it reads back, without
starting Kolibri: the settings taken from kolibri-server, every file nginx writes
inside the lab's folder, and nginx's own check of the configuration when nginx is
installed (the topology itself runs in ``test/e2e/test_uwsgi_server.py``).
"""

import os
import subprocess

import pytest

from sync_lab.harness import uwsgi_server
from sync_lab.harness.topology import peak_rss_line
from sync_lab.harness.topology import process_peaks_line
from sync_lab.harness.topology import recycling_line
from sync_lab.harness.uwsgi_server import PeakWatch
from sync_lab.harness.uwsgi_server import ProcessPeak
from sync_lab.harness.uwsgi_server import Recycling


def _settings(ini):
    lines = ini.splitlines()
    assert lines[0] == "[uwsgi]"
    return dict(line.split(" = ", 1) for line in lines[1:])


def test_uwsgi_ini__kolibri_servers_settings_on_a_local_port():
    settings = _settings(uwsgi_server.uwsgi_ini(8123, home="/venv"))
    assert settings["socket"] == "127.0.0.1:8123"
    assert settings["processes"] == "4"
    assert settings["home"] == "/venv"
    assert settings["module"] == "kolibri.deployment.default.wsgi:application"
    for key, value in {
        "master": "true",
        "harakiri": "5000",
        "limit-as": "1024",
        "reload-on-rss": "512",
        "die-on-term": "true",
        "need-app": "true",
    }.items():
        assert settings[key] == value, key
    # no request threads: kolibri-server's workers have one each
    assert "threads" not in settings


def test_uwsgi_ini__settings_can_be_changed():
    ini = uwsgi_server.uwsgi_ini(8123, processes=2, settings={"harakiri": 30})
    settings = _settings(ini)
    assert settings["processes"] == "2"
    assert settings["harakiri"] == "30"


def test_nginx_config__everything_it_writes_is_in_the_lab_folder(tmp_path):
    config = uwsgi_server.nginx_config(8080, 8123, tmp_path)
    assert "listen 127.0.0.1:8080;" in config
    assert "uwsgi_pass 127.0.0.1:8123;" in config
    assert "daemon off;" in config
    for directive in ("pid", "error_log", "access_log") + tuple(
        "{}_temp_path".format(kind) for kind in uwsgi_server._NGINX_TEMP_KINDS
    ):
        [line] = [
            line.strip()
            for line in config.splitlines()
            if line.strip().startswith(directive + " ")
        ]
        assert line.split()[1].startswith(str(tmp_path)), line
    assert "/etc/nginx" not in config and "/var/" not in config


def test_nginx_config__nginx_defaults_that_kolibri_server_keeps():
    config = uwsgi_server.nginx_config(8080, 8123, "/lab")
    for line in (
        "client_max_body_size 1m;",
        "uwsgi_read_timeout 60s;",
        "uwsgi_buffering on;",
    ):
        assert line in config
    changed = uwsgi_server.nginx_config(
        8080, 8123, "/lab", settings={"uwsgi_read_timeout": "10s"}
    )
    assert "uwsgi_read_timeout 10s;" in changed
    assert "uwsgi_read_timeout 60s;" not in changed


@pytest.mark.skipif(
    uwsgi_server.nginx_program() is None, reason="nginx is not installed"
)
def test_nginx_config__nginx_accepts_it(tmp_path):
    config_path = tmp_path / "nginx.conf"
    config_path.write_text(uwsgi_server.nginx_config(8080, 8123, tmp_path))
    for kind in uwsgi_server._NGINX_TEMP_KINDS:
        (tmp_path / "nginx-temp" / kind).mkdir(parents=True)
    result = subprocess.run(
        [
            str(uwsgi_server.nginx_program()),
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(config_path),
            "-e",
            str(tmp_path / "nginx-error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_read_access_log__requests_status_and_times(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        '127.0.0.1 - - [05/Dec/2026:22:44:59 +0000] "GET /api/public/info/?v=3 '
        'HTTP/1.1" 200 211 "-" "Kolibri/0.19.5" 0.116 0.115 . 180\n'
        '127.0.0.1 - - [05/Dec/2026:22:45:00 +0000] "GET /favicon.ico HTTP/1.1" '
        '200 43 "-" "curl/8" 0.000 - . 75\n'
        "not a request\n"
    )
    first, second = uwsgi_server.read_access_log(log)
    assert first == ("GET", "/api/public/info/?v=3", 200, 0.116, 0.115, 180)
    assert second.upstream_time is None
    assert uwsgi_server.read_access_log(tmp_path / "missing.log") == []


def test_missing_programs__names_uwsgi_beside_the_interpreter(tmp_path):
    python = tmp_path / "bin" / "python"
    [missing] = [
        line for line in uwsgi_server.missing_programs(str(python)) if "uwsgi" in line
    ]
    assert str(python) in missing


def test_child_pids_and_peak_rss_of_a_process():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in uwsgi_server.child_pids(os.getpid())
        assert uwsgi_server.peak_rss_kb(child.pid) > 0
    finally:
        child.kill()
        child.wait()


def test_peak_rss_line__one_figure_per_role():
    line = peak_rss_line(
        [
            ProcessPeak("services", 1, 102400),
            ProcessPeak("uwsgi worker", 2, 51200),
            ProcessPeak("uwsgi worker", 3, 102400),
        ]
    )
    assert line == "services 100 MB; uwsgi worker 2 x up to 100 MB, 150 MB together"


def test_process_peaks_line__each_process_and_which_had_ended():
    line = process_peaks_line(
        [ProcessPeak("uwsgi worker", 2, 51200), ProcessPeak("uwsgi worker", 3, 102400)],
        gone=[("uwsgi worker", 3)],
    )
    assert line == "uwsgi worker 2 50 MB, 3 100 MB (gone)"


def test_recycle_lines__what_uwsgi_logs_when_it_replaces_a_worker():
    log = "\n".join(
        [
            "spawned uWSGI worker 1 (pid: 11, cores: 1)",
            "...The work of process 11 is done. Seeya!",
            "worker 1 killed successfully (pid: 11)",
            "Respawned uWSGI worker 1 (new pid: 15)",
            "DAMN ! worker 2 (pid: 12) died, killed by signal 9 :( trying respawn ...",
        ]
    )
    assert [line.split()[0] for line in uwsgi_server.recycle_lines(log)] == [
        "...The",
        "worker",
        "Respawned",
        "DAMN",
    ]
    assert recycling_line(Recycling([], [], [])) == "no"


class _Server:
    name = "server"

    def __init__(self, *pids):
        self.workers = list(pids)

    def pids(self):
        return {"uwsgi worker": list(self.workers)}

    def uwsgi_log_text(self):
        return "Respawned uWSGI worker 1 (new pid: 2)\n"


def test_peak_watch__a_replaced_process_keeps_its_last_sampled_peak():
    first = subprocess.Popen(["sleep", "30"])
    second = subprocess.Popen(["sleep", "30"])
    server = _Server(first.pid)
    try:
        with PeakWatch(server, interval=0.05) as watch:
            first.kill()
            first.wait()
            server.workers = [second.pid]
    finally:
        second.kill()
        second.wait()

    assert {peak.pid for peak in watch.peaks()} == {first.pid, second.pid}
    recycling = watch.recycling()
    assert recycling.gone == [("uwsgi worker", first.pid)]
    assert recycling.new == [("uwsgi worker", second.pid)]
    assert recycling.log_lines == ["Respawned uWSGI worker 1 (new pid: 2)"]
