"""
Checks a built sdist and wheel against the checkout they were built from, for
.ci/check-package: both hold every module of the package and nothing of the tests
or the lab, the wheel installs nothing beside the package, and its metadata carries
the package's version, the requirements of requirements.txt and the Kolibri plugin
entry point.

Runs in the build tools' environment, which has ``packaging`` (``build`` needs it).

Usage: check_dist_contents.py CHECKOUT SDIST WHEEL
"""

import email
import os
import re
import sys
import tarfile
import zipfile

from packaging.requirements import Requirement

PACKAGE = "kolibri_sync_extras_plugin"

#: What the sdist needs besides the modules: setup.py reads the README and
#: requirements.txt; the changelog is for whoever unpacks it.
SDIST_FILES = ("setup.py", "README.md", "CHANGELOG.md", "requirements.txt")

#: Folders and files of the repository that neither built file may hold.
UNWANTED_FOLDER = re.compile(r"(^|/)(test|tests|sync_lab|__pycache__)(/|$)")
UNWANTED_FILE = re.compile(r"(^|/)(conftest\.py|test_[^/]*\.py|[^/]*\.py[cod])$")


def modules_in(checkout):
    """
    :return: every module of the package in the checkout, as a path from its root
    :rtype: set
    """
    found = set()
    for folder, dirs, files in os.walk(os.path.join(checkout, PACKAGE)):
        dirs[:] = [name for name in dirs if name != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), checkout)
                found.add(path.replace(os.sep, "/"))
    return found


def version_in(checkout):
    path = os.path.join(checkout, PACKAGE, "__init__.py")
    with open(path, encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


def requirements_in(checkout):
    """
    :return: the requirements of requirements.txt, written the way metadata is
    :rtype: set
    """
    with open(os.path.join(checkout, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return {str(Requirement(line)) for line in lines if line and line[0] != "-"}


def read_wheel(path):
    """
    :return: the wheel's file names, its .dist-info folder, its metadata and its
        entry points
    :rtype: tuple
    """
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        (dist_info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
        metadata = email.message_from_bytes(wheel.read(dist_info + "/METADATA"))
        entry_points = wheel.read(dist_info + "/entry_points.txt").decode()
    return names, dist_info, metadata, entry_points


def read_sdist(path):
    """
    :return: the sdist's file names, without the folder name-version/ they sit in
    :rtype: set
    """
    with tarfile.open(path) as sdist:
        return {
            member.name.split("/", 1)[1]
            for member in sdist.getmembers()
            if member.isfile() and "/" in member.name
        }


def problems_with(checkout, sdist_names, wheel):
    """
    :return: one line for each thing wrong with the built files
    :rtype: list
    """
    wheel_names, dist_info, metadata, entry_points = wheel
    problems = []
    modules = modules_in(checkout)
    if not modules:
        problems.append("found no module of {} in {}".format(PACKAGE, checkout))
    for label, names in (("wheel", wheel_names), ("sdist", sdist_names)):
        problems.extend(
            "the {} lacks {}".format(label, name) for name in sorted(modules - names)
        )
        problems.extend(
            "the {} ships {}".format(label, name)
            for name in sorted(names)
            if UNWANTED_FOLDER.search(name) or UNWANTED_FILE.search(name)
        )
    problems.extend(
        "the sdist lacks {}".format(name)
        for name in SDIST_FILES
        if name not in sdist_names
    )
    beside = {name.split("/")[0] for name in wheel_names} - {PACKAGE, dist_info}
    problems.extend(
        "the wheel installs {} beside the package".format(name)
        for name in sorted(beside)
    )

    version = version_in(checkout)
    if metadata["Version"] != version:
        problems.append(
            "the wheel is version {}, the package says {}".format(
                metadata["Version"], version
            )
        )
    declared = {str(Requirement(r)) for r in metadata.get_all("Requires-Dist") or []}
    wanted = requirements_in(checkout)
    if declared != wanted:
        problems.append(
            "the wheel requires {}, requirements.txt {}".format(
                sorted(declared), sorted(wanted)
            )
        )
    entry_point = "{0} = {0}".format(PACKAGE)
    if "[kolibri.plugins]" not in entry_points or entry_point not in entry_points:
        problems.append("the wheel lacks the kolibri.plugins entry point")
    return problems


def main(checkout, sdist_path, wheel_path):
    sdist_names = read_sdist(sdist_path)
    wheel = read_wheel(wheel_path)
    wheel_names, _, metadata, _ = wheel
    for label, names in (("wheel", wheel_names), ("sdist", sdist_names)):
        print("{}:".format(label))
        for name in sorted(names):
            print("  " + name)
    print(
        "version {}, requires {}, Python {}".format(
            metadata["Version"],
            ", ".join(metadata.get_all("Requires-Dist") or ["nothing"]),
            metadata["Requires-Python"],
        )
    )
    problems = problems_with(checkout, sdist_names, wheel)
    if problems:
        print("the built files are wrong:", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        return 1
    print(
        "both hold the {} modules of {}, and no tests or lab code".format(
            len(modules_in(checkout)), PACKAGE
        )
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(main(*sys.argv[1:]))
