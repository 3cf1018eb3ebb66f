"""
The lab's free ports: under pytest-xdist each worker draws from a block of its own,
so two test modules running at once cannot start servers on the same port.
"""

import contextlib
import socket

import pytest

from sync_lab.harness import instances


def test_free_port__xdist_worker__from_its_own_block(monkeypatch):
    monkeypatch.setenv(instances.XDIST_WORKER_ENV, "gw1")
    low = instances.WORKER_PORTS_START + instances.WORKER_PORTS_PER_WORKER

    ports = {instances.free_port() for _ in range(20)}

    assert all(low <= port < low + instances.WORKER_PORTS_PER_WORKER for port in ports)


def test_free_port__xdist_worker__skips_ports_in_use(monkeypatch):
    monkeypatch.setenv(instances.XDIST_WORKER_ENV, "gw0")
    monkeypatch.setattr(instances, "WORKER_PORTS_PER_WORKER", 3)
    first, second, third = range(
        instances.WORKER_PORTS_START, instances.WORKER_PORTS_START + 3
    )
    with _listening_on(first), _listening_on(second):
        assert instances.free_port() == third


@contextlib.contextmanager
def _listening_on(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((instances.LOCALHOST, port))
        except OSError:
            pytest.skip("port {} is taken on this machine".format(port))
        sock.listen()
        yield


def test_free_port__no_xdist__any_port_the_kernel_gives(monkeypatch):
    monkeypatch.delenv(instances.XDIST_WORKER_ENV, raising=False)

    port = instances.free_port()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((instances.LOCALHOST, port))
