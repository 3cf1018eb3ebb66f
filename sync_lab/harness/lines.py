"""
The Kolibri release lines installed on this machine, for syncs between instances
of different lines.

Each line lives in its own virtual environment of this checkout, as the Makefile
creates them: ``make venv`` puts the default line (0.19) in ``.venv``, and
``make venv KOLIBRI=0.16`` puts 0.16 in ``.venv-0.16``. An instance runs another
line by running that environment's interpreter
(``KolibriInstance(..., python=line_python("0.16"))``); this checkout is on its
path either way, so the lab's own functions run inside it.
"""

import functools
import subprocess
import sys
from pathlib import Path

from .instances import REPO_ROOT

__all__ = ["DEFAULT_LINE", "LINES", "venv_dir", "line_python", "kolibri_version"]

#: The line ``make venv`` installs into ``.venv``.
DEFAULT_LINE = "0.19"
#: Every line the plugin supports, oldest first.
LINES = ("0.16", "0.17", "0.18", "0.19")


def venv_dir(line):
    """
    :param line: A Kolibri release line, e.g. ``"0.16"``
    :return: Where the Makefile installs that line
    :rtype: pathlib.Path
    """
    if line not in LINES:
        raise ValueError(
            "Kolibri line {!r}: choose one of {}".format(line, ", ".join(LINES))
        )
    return REPO_ROOT / (".venv" if line == DEFAULT_LINE else ".venv-" + line)


@functools.lru_cache(maxsize=None)
def kolibri_version(python=None):
    """
    :param python: An interpreter; this one by default
    :return: The version of the Kolibri that interpreter imports, e.g. ``"0.16.2"``
    :rtype: str
    """
    result = subprocess.run(
        [python or sys.executable, "-c", "import kolibri; print(kolibri.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def line_python(line):
    """
    The interpreter that runs Kolibri ``line``: this one if it does, else the one of
    the line's virtual environment.

    :return: The interpreter's path, or ``None`` when the line is not installed
        (create it with ``make venv KOLIBRI=<line>``)
    :rtype: str|None
    """
    if kolibri_version().startswith(line + "."):
        return sys.executable
    python = venv_dir(line) / "bin" / "python"
    if not python.exists():
        return None
    return str(Path(python))
