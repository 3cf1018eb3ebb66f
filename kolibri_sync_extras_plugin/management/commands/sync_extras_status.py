"""
``kolibri manage sync_extras_status``: the sync stages running in the background,
and whether any is stuck or errored, for people and for health checks.
"""

import json

from django.utils import timezone

from kolibri_sync_extras_plugin.admin.status import DEFAULT_STUCK_AFTER_SECONDS
from kolibri_sync_extras_plugin.admin.status import ERRORED
from kolibri_sync_extras_plugin.admin.status import STUCK
from kolibri_sync_extras_plugin.admin.status import report_as_dict
from kolibri_sync_extras_plugin.admin.status import report_background_stages
from kolibri_sync_extras_plugin.compat import BaseCommand
from kolibri_sync_extras_plugin.compat import CommandError

#: Exit status when a stage errored, and when one is stuck (which outranks it).
EXIT_ERRORED = 1
EXIT_STUCK = 2

_COLUMNS = (
    "TRANSFER SESSION",
    "DIRECTION",
    "FACILITY",
    "STAGE",
    "STATUS",
    "JOB",
    "PROGRESS",
    "AGE",
    "PROBLEM",
)


def _duration(seconds):
    """
    :return: ``seconds`` the short way a person reads it: 42s, 4m02s, 3h05m, 2d03h
    :rtype: str
    """
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return "{}s".format(seconds)
    if seconds < 3600:
        return "{}m{:02d}s".format(seconds // 60, seconds % 60)
    if seconds < 86400:
        return "{}h{:02d}m".format(seconds // 3600, seconds % 3600 // 60)
    return "{}d{:02d}h".format(seconds // 86400, seconds % 86400 // 3600)


def _progress(report):
    if not report.total_progress:
        return "-"
    percent = "{:.0f}%".format(100 * report.percentage)
    if report.total_progress > 1:
        # a stage counted in records; one counted as a single step shows its percentage
        return "{} ({:,}/{:,})".format(
            percent, int(report.progress), int(report.total_progress)
        )
    return percent


def _problem(report):
    if report.problem:
        return "{}: {}".format(report.problem, report.detail)
    return report.detail or "-"


def _row(report):
    return (
        report.transfer_session_id or "-",
        report.direction or "-",
        report.facility_name or report.facility_id or "-",
        report.stage or "-",
        report.stage_status or "-",
        report.job_state or "no job",
        _progress(report),
        _duration(report.age_seconds),
        _problem(report),
    )


def _table(rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(*rows)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    )


class Command(BaseCommand):
    help = (
        "List the sync stages this server runs in the background (transfer session, "
        "direction, facility, stage, job state, progress, age, last error). Exits 2 "
        "if a stage is stuck, 1 if one errored, 0 otherwise, so it can serve as a "
        "health check."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the stages as JSON on one line, for scripts.",
        )
        parser.add_argument(
            "--stuck-after",
            type=float,
            default=DEFAULT_STUCK_AFTER_SECONDS,
            metavar="SECONDS",
            help=(
                "A stage whose job has waited and run for longer than this is stuck "
                "(default: %(default)s)."
            ),
        )
        parser.add_argument(
            "--errors-within",
            type=float,
            default=None,
            metavar="SECONDS",
            help=(
                "Count a failed or cancelled job as errored only if it ended within "
                "this many seconds (default: every one still in job storage)."
            ),
        )

    def handle(self, *args, **options):
        now = timezone.now()
        reports = report_background_stages(
            stuck_after=options["stuck_after"],
            errors_within=options["errors_within"],
            now=now,
        )
        stuck = sum(1 for report in reports if report.problem == STUCK)
        errored = sum(1 for report in reports if report.problem == ERRORED)
        summary = "{} background stage{}: {} stuck, {} errored".format(
            len(reports), "" if len(reports) == 1 else "s", stuck, errored
        )
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "checked_at": now.isoformat(),
                        "stuck_after_seconds": options["stuck_after"],
                        "errors_within_seconds": options["errors_within"],
                        "healthy": not (stuck or errored),
                        "summary": {
                            "stages": len(reports),
                            "stuck": stuck,
                            "errored": errored,
                        },
                        "stages": [report_as_dict(report) for report in reports],
                    },
                    # one line, the last on stdout: Kolibri logs to stdout before it
                    separators=(",", ":"),
                )
            )
        else:
            if reports:
                self.stdout.write(_table([_COLUMNS] + [_row(r) for r in reports]))
                self.stdout.write("")
            self.stdout.write(summary)
        if stuck:
            raise CommandError(summary, returncode=EXIT_STUCK)
        if errored:
            raise CommandError(summary, returncode=EXIT_ERRORED)
