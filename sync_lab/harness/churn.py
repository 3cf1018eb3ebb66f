"""
A server's own users writing while clients sync: a process inside the server
instance's home (same database, SQLite or PostgreSQL) that keeps changing the
facility's data through Kolibri's own models, as coaches and learners using the
server would, so morango's dirty bits and deleted-model records are set exactly as
in real use.

It renames learners, edits lessons (after creating a few), updates and creates
content summary and session logs of the facility's learners, and now and then
deletes a lesson or a log. Each write is a short transaction of its own, as one
request's would be, at a target rate of rows per second. It stops by itself after
``--max-seconds``, or on SIGTERM, and reports how many writes of each kind it made.

Run as a program inside an instance (:class:`Churn` starts it and stops it by its
pid)::

    python -m sync_lab.harness.churn --facility FACILITY --rate 150 --report churn.json
"""

import argparse
import json
import random
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta

from mirakuru.exceptions import ExecutorError

from .instances import InstanceError
from .instances import LabService

__all__ = [
    "DEFAULT_RATE",
    "KINDS",
    "Churn",
    "churn",
]

#: Rows per second the churn aims at by default.
DEFAULT_RATE = 150.0
#: The churn stops by itself after this long, should nobody stop it.
DEFAULT_MAX_SECONDS = 1800.0
#: The kinds of write the churn makes, and how often it picks each (out of 100).
WEIGHTS = (
    ("learner_renames", 22),
    ("lesson_edits", 14),
    ("log_updates", 36),
    ("log_creations", 24),
    ("deletions", 4),
)
KINDS = tuple(kind for kind, _ in WEIGHTS)
#: Lessons the churn creates before it starts, and keeps at least (a deletion
#: picks a log rather than the last lessons).
LESSONS = 6
#: How often the churn looks again for the facility's learners, lessons and logs:
#: clients push new ones all the time.
REFRESH_SECONDS = 2.0
#: What the output says once the churn has begun writing.
READY_TEXT = "churn: writing"
# when this far behind its schedule, the churn starts the schedule anew rather
# than writing flat out to catch up
_MAX_LAG_SECONDS = 1.0
_ERRORS_KEPT = 10
_NAMES = ("Amina", "Bongani", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana")


class _Stop:
    """Set by SIGTERM: the churn ends after the write under way."""

    def __init__(self):
        self.asked = False

    def __call__(self, signum, frame):
        self.asked = True


class _Pools:
    """The ids the churn picks from, read again every :data:`REFRESH_SECONDS`."""

    def __init__(self, facility):
        self.facility = facility
        self.read_at = None
        self.learners = self.lessons = self.summary_logs = self.session_logs = []

    def refresh(self, force=False):
        from kolibri.core.auth.models import FacilityUser
        from kolibri.core.lessons.models import Lesson
        from kolibri.core.logger.models import ContentSessionLog
        from kolibri.core.logger.models import ContentSummaryLog

        now = time.monotonic()
        if not force and self.read_at and now - self.read_at < REFRESH_SECONDS:
            return
        dataset_id = self.facility.dataset_id
        self.learners = list(
            FacilityUser.objects.filter(facility=self.facility)
            .exclude(devicepermissions__is_superuser=True)
            .values_list("id", flat=True)
        )
        self.lessons = list(
            Lesson.objects.filter(dataset_id=dataset_id).values_list("id", flat=True)
        )
        self.summary_logs = list(
            ContentSummaryLog.objects.filter(dataset_id=dataset_id).values_list(
                "id", flat=True
            )
        )
        self.session_logs = list(
            ContentSessionLog.objects.filter(dataset_id=dataset_id).values_list(
                "id", flat=True
            )
        )
        self.read_at = now

    def forget(self, pool, row_id):
        try:
            getattr(self, pool).remove(row_id)
        except ValueError:
            pass


class _Gone(Exception):
    """The row picked was deleted meanwhile (by a sync, or by the churn itself)."""


def _one(model, row_id):
    row = model.objects.filter(id=row_id).first()
    if row is None:
        raise _Gone(row_id)
    return row


class _Writer:
    """Each method makes one write, in a transaction of its own."""

    def __init__(self, facility, rng):
        from kolibri.core.auth.models import Classroom
        from kolibri.core.auth.models import FacilityUser

        self.facility = facility
        self.rng = rng
        self.pools = _Pools(facility)
        self.classroom = Classroom.objects.filter(parent=facility).first()
        # lessons need a creator: the facility's super user, as a coach would be
        self.creator = (
            FacilityUser.objects.filter(
                facility=facility, devicepermissions__is_superuser=True
            ).first()
            or FacilityUser.objects.filter(facility=facility).first()
        )
        self.serial = 0

    def _tag(self):
        self.serial += 1
        return self.serial

    def create_lesson(self):
        from django.db import transaction
        from kolibri.core.lessons.models import Lesson
        from kolibri.core.lessons.models import LessonAssignment

        if self.classroom is None or self.creator is None:
            raise _Gone("no classroom or creator for a lesson")
        with transaction.atomic():
            lesson = Lesson.objects.create(
                title="Churn lesson {}".format(self._tag()),
                description="made by the churn",
                collection=self.classroom,
                created_by=self.creator,
            )
            LessonAssignment.objects.create(
                lesson=lesson, collection=self.classroom, assigned_by=self.creator
            )
        self.pools.lessons.append(lesson.id)
        return "lesson_creations"

    def learner_renames(self):
        from django.db import transaction
        from kolibri.core.auth.models import FacilityUser

        if not self.pools.learners:
            raise _Gone("no learner")
        row_id = self.rng.choice(self.pools.learners)
        with transaction.atomic():
            learner = _one(FacilityUser, row_id)
            learner.full_name = "{} Churn {}".format(
                self.rng.choice(_NAMES), self._tag()
            )
            learner.save()
        return "learner_renames"

    def lesson_edits(self):
        from django.db import transaction
        from kolibri.core.lessons.models import Lesson

        # now and then a coach makes a new lesson, and deletions take some away
        if len(self.pools.lessons) < LESSONS or self.rng.random() < 0.05:
            return self.create_lesson()
        row_id = self.rng.choice(self.pools.lessons)
        with transaction.atomic():
            lesson = _one(Lesson, row_id)
            tag = self._tag()
            if self.rng.random() < 0.5:
                lesson.title = "Churn lesson edit {}".format(tag)
            else:
                lesson.description = "edited by the churn, {}".format(tag)
            lesson.save()
        return "lesson_edits"

    def log_updates(self):
        from django.db import transaction
        from django.utils import timezone
        from kolibri.core.logger.models import ContentSessionLog
        from kolibri.core.logger.models import ContentSummaryLog

        summary = self.rng.random() < 0.5 or not self.pools.session_logs
        pool = "summary_logs" if summary else "session_logs"
        ids = getattr(self.pools, pool)
        if not ids:
            raise _Gone("no log")
        row_id = self.rng.choice(ids)
        model = ContentSummaryLog if summary else ContentSessionLog
        with transaction.atomic():
            log = _one(model, row_id)
            log.progress = min(
                1.0, round(log.progress + self.rng.uniform(0.01, 0.2), 4)
            )
            log.time_spent = log.time_spent + self.rng.randint(5, 120)
            log.end_timestamp = timezone.now()
            if summary and log.progress >= 1.0 and log.completion_timestamp is None:
                log.completion_timestamp = log.end_timestamp
            log.save()
        return "log_updates"

    def log_creations(self):
        from django.db import transaction
        from django.utils import timezone
        from kolibri.core.logger.models import ContentSessionLog
        from kolibri.core.logger.models import ContentSummaryLog

        now = timezone.now()
        if self.pools.summary_logs and self.rng.random() < 0.7:
            # a new session of something a learner has opened before
            with transaction.atomic():
                summary = _one(
                    ContentSummaryLog, self.rng.choice(self.pools.summary_logs)
                )
                spent = float(self.rng.randint(10, 600))
                log = ContentSessionLog.objects.create(
                    user_id=summary.user_id,
                    content_id=summary.content_id,
                    channel_id=summary.channel_id,
                    kind=summary.kind,
                    start_timestamp=now - timedelta(seconds=spent),
                    end_timestamp=now,
                    time_spent=spent,
                    progress=round(self.rng.uniform(0.05, 1.0), 4),
                )
            self.pools.session_logs.append(log.id)
            return "log_creations"
        if not self.pools.learners:
            raise _Gone("no learner")
        # a learner opens something new: a content id no summary log has yet
        with transaction.atomic():
            log = ContentSummaryLog.objects.create(
                user_id=self.rng.choice(self.pools.learners),
                content_id=uuid.UUID(int=self.rng.getrandbits(128)).hex,
                channel_id=uuid.UUID(int=self.rng.getrandbits(128)).hex,
                kind=self.rng.choice(("video", "exercise", "document")),
                start_timestamp=now,
                end_timestamp=now,
                time_spent=0.0,
                progress=0.0,
            )
        self.pools.summary_logs.append(log.id)
        return "log_creations"

    def deletions(self):
        from django.db import transaction
        from kolibri.core.lessons.models import Lesson
        from kolibri.core.logger.models import ContentSessionLog
        from kolibri.core.logger.models import ContentSummaryLog

        choice = self.rng.random()
        if choice < 0.25 and len(self.pools.lessons) > LESSONS // 2:
            pool, model = "lessons", Lesson
        elif choice < 0.5 and self.pools.summary_logs:
            pool, model = "summary_logs", ContentSummaryLog
        else:
            pool, model = "session_logs", ContentSessionLog
        ids = getattr(self.pools, pool)
        if not ids:
            raise _Gone("nothing to delete")
        row_id = self.rng.choice(ids)
        self.pools.forget(pool, row_id)
        # a soft delete: morango's post_delete signal notes it in DeletedModels,
        # for this and every syncable row the deletion cascades to
        with transaction.atomic():
            _one(model, row_id).delete()
        return "deletions"


def _pick(rng):
    point = rng.uniform(0, sum(weight for _, weight in WEIGHTS))
    for kind, weight in WEIGHTS:
        point -= weight
        if point < 0:
            return kind
    return WEIGHTS[-1][0]


def churn(facility_id, rate=DEFAULT_RATE, max_seconds=DEFAULT_MAX_SECONDS, seed=0):
    """
    Inside an instance: write at about ``rate`` rows per second until SIGTERM or
    ``max_seconds``.

    :return: ``writes`` (made, per kind of :data:`KINDS`, plus lessons created),
        ``missed`` (the row picked was gone), ``errors`` (per kind, with the first
        few messages in ``error_messages``), ``seconds`` and ``rate`` (achieved)
    :rtype: dict
    """
    from django.db import DatabaseError
    from kolibri.core.auth.models import Facility

    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rng = random.Random(seed)
    writer = _Writer(Facility.objects.get(id=facility_id), rng)
    writer.pools.refresh(force=True)
    writes, missed, errors = Counter(), Counter(), Counter()
    # the lessons to edit are made before the clock starts: not part of the rate
    while len(writer.pools.lessons) < LESSONS:
        writer.create_lesson()
    messages = []
    sys.stdout.write(READY_TEXT + "\n")
    sys.stdout.flush()

    interval = 1.0 / rate
    started = time.monotonic()
    due = started
    while not stop.asked and time.monotonic() - started < max_seconds:
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > _MAX_LAG_SECONDS:
            due = now
        due += interval
        kind = _pick(rng)
        try:
            writer.pools.refresh()
            writes[getattr(writer, kind)()] += 1
        except _Gone:
            missed[kind] += 1
            writer.pools.read_at = None
        except DatabaseError as e:
            # a user's request that met a busy database: it fails, the user retries
            errors[kind] += 1
            if len(messages) < _ERRORS_KEPT:
                messages.append("{}: {}".format(kind, e))
    seconds = time.monotonic() - started
    return {
        "writes": {kind: writes[kind] for kind in KINDS + ("lesson_creations",)},
        "total": sum(writes.values()),
        "missed": dict(missed),
        "errors": dict(errors),
        "error_messages": messages,
        "seconds": round(seconds, 1),
        "rate": round(sum(writes.values()) / seconds, 1) if seconds else 0.0,
        "target_rate": rate,
        "stopped_by": "signal" if stop.asked else "time",
    }


class Churn:
    """
    The churn process on a running instance's home, started and stopped by its own
    pid: ``with Churn(server, facility_id, rate=150) as churn: ...``, then
    :attr:`report` (see :func:`churn`) once it has stopped.

    :type instance: sync_lab.harness.instances.KolibriInstance
    """

    def __init__(
        self,
        instance,
        facility_id,
        rate=DEFAULT_RATE,
        seed=0,
        max_seconds=DEFAULT_MAX_SECONDS,
    ):
        if rate <= 0:
            raise ValueError("the churn's rate must be above 0")
        self.instance = instance
        self.facility_id = facility_id
        self.rate = rate
        self.seed = seed
        self.max_seconds = max_seconds
        self.report = None
        self._process = None
        self._report_path = instance.lab_dir / "churn-report.json"
        self._output_path = instance.lab_dir / "churn.txt"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def pid(self):
        process = self._process
        return process.process.pid if process and process.running() else None

    def start(self, timeout=180):
        """
        Start the churn and wait until it writes (its lessons made).

        :raises InstanceError: if it exits or does not begin within ``timeout``
        """
        self.instance.lab_dir.mkdir(parents=True, exist_ok=True)
        if self._report_path.exists():
            self._report_path.unlink()
        command = [
            self.instance.python,
            "-m",
            "sync_lab.harness.churn",
            "--facility",
            self.facility_id,
            "--rate",
            str(self.rate),
            "--seed",
            str(self.seed),
            "--max-seconds",
            str(self.max_seconds),
            "--report",
            str(self._report_path),
        ]
        with open(self._output_path, "w") as output:
            self._process = LabService(
                command,
                self.instance.env(),
                self.instance.home,
                output,
                timeout,
                ready_text=READY_TEXT,
            )
            try:
                self._process.start()
            except ExecutorError as e:
                self._process = None
                raise InstanceError(
                    "{}: the churn did not start ({}); output:\n{}".format(
                        self.instance.name, e, self._output_path.read_text()[-4000:]
                    )
                )

    def stop(self):
        """
        SIGTERM the churn by its pid (SIGKILL if it has not ended in the start's
        timeout) and read its report.

        :return: The report, or ``None`` if the churn wrote none
        :rtype: dict|None
        """
        process, self._process = self._process, None
        if process is None:
            return self.report
        process.stop_quietly()
        try:
            with open(self._report_path) as report:
                self.report = json.load(report)
        except (OSError, ValueError):
            self.report = {
                "writes": {},
                "total": 0,
                "failed": self._output_path.read_text()[-4000:],
            }
        return self.report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--facility", required=True)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("--report", help="where to write the report as JSON")
    args = parser.parse_args(argv)

    from kolibri.utils.main import initialize

    initialize(skip_update=True)
    report = churn(
        args.facility, rate=args.rate, max_seconds=args.max_seconds, seed=args.seed
    )
    text = json.dumps(report)
    if args.report:
        with open(args.report, "w") as report_file:
            report_file.write(text)
    sys.stdout.write("churn report: {}\n".format(text))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
