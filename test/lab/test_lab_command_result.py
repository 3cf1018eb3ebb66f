"""
How a failed Kolibri command is summed up in one line: a test run's closing
summary keeps only the first line of a failure, so that line must say why.
"""

from sync_lab.harness.instances import CommandResult

SYNC_OUTPUT = """\
INFO Running Kolibri with the following settings: kolibri.deployment.default.settings.base
Traceback (most recent call last):
  File "sync.py", line 12, in _sync
requests.exceptions.HTTPError: 400 Client Error: Bad Request for url: http://127.0.0.1:20786/api/morango/v1/buffers/
INFO Closing the sync session
"""


def test_reason__names_the_exit_and_the_last_error_line():
    result = CommandResult(["sync"], 1, 3.25, SYNC_OUTPUT)

    assert result.reason() == (
        "exited 1 after 3.2s: requests.exceptions.HTTPError: 400 Client Error: "
        "Bad Request for url: http://127.0.0.1:20786/api/morango/v1/buffers/"
    )


def test_reason__no_error_line__the_last_line():
    result = CommandResult(["sync"], 0, 1.0, "INFO one\nINFO done\n\n")

    assert result.reason() == "exited 0 after 1.0s: INFO done"


def test_reason__timed_out__says_so():
    result = CommandResult(["sync"], None, 900.0, "", timed_out=True)

    assert result.reason() == "timed out after 900.0s: no output"
