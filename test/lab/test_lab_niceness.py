"""
A client's commands run at the niceness the lab gives it, so that many clients on
one machine leave the processor to the server first.
"""

import os
import stat
import subprocess

import pytest

from sync_lab.harness.instances import KolibriInstance
from sync_lab.harness.instances import niced

#: The scheduling group of this process's session, on Linux with autogroups on.
AUTOGROUP = "/proc/self/autogroup"


def _interpreter_printing_its_niceness(folder):
    """A stand-in for Python that prints the niceness it runs at and exits."""
    script = folder / "python"
    script.write_text('#!/bin/sh\necho "niceness $(nice)"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_kolibri_command__client_niceness__runs_at_it(tmp_path):
    instance = KolibriInstance(
        "client", root=tmp_path, python=_interpreter_printing_its_niceness(tmp_path)
    )
    instance.niceness = 7
    with instance:
        result = instance.kolibri("--version")

    assert "niceness {}".format(os.nice(0) + 7) in result.output


def test_kolibri_command__no_niceness_given__runs_as_the_lab(tmp_path):
    instance = KolibriInstance(
        "server", root=tmp_path, python=_interpreter_printing_its_niceness(tmp_path)
    )
    with instance:
        result = instance.kolibri("--version")

    assert "niceness {}".format(os.nice(0)) in result.output


@pytest.mark.skipif(
    not os.path.exists(AUTOGROUP), reason="the kernel groups no sessions here"
)
def test_niced_command__own_session__its_group_runs_at_the_niceness_too():
    # each session its own group: a niceness counting only inside it would leave
    # 32 clients 32 shares of the processor to the server's one
    command = niced(["cat", AUTOGROUP], 19)

    output = subprocess.run(
        command, capture_output=True, text=True, start_new_session=True, check=True
    ).stdout

    assert output.split()[-2:] == ["nice", "19"]


@pytest.mark.skipif(
    not os.path.exists(AUTOGROUP), reason="the kernel groups no sessions here"
)
def test_niced_command__in_its_parents_session__leaves_that_sessions_group_alone():
    # the group is this test run's own, and every process's of its session
    before = _read(AUTOGROUP)
    command = niced(["cat", AUTOGROUP], 19)

    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert output == before
    assert _read(AUTOGROUP) == before


def _read(path):
    with open(path) as f:
        return f.read()


def test_niced_command__runs_at_the_niceness_and_passes_its_arguments():
    command = niced(["sh", "-c", 'echo "$(nice) $0 $1"', "a b", "c"], 5)

    output = subprocess.run(
        command, capture_output=True, text=True, start_new_session=True, check=True
    ).stdout

    assert output.split() == [str(os.nice(0) + 5), "a", "b", "c"]
