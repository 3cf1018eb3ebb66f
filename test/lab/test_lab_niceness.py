"""
A client's commands run at the niceness the lab gives it, so that many clients on
one machine leave the processor to the server first.
"""

import os
import stat

from sync_lab.harness.instances import KolibriInstance


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
