"""
The one place that knows how the supported Kolibri release lines differ.

The plugin runs on Kolibri 0.16.x, 0.17.x, 0.18.x and 0.19.x. Every other module
imports the names below instead of the Kolibri, Django or morango name they stand
for, so a difference between lines is handled here once:

- Kolibri 0.19 keeps job storage in a Django model; 0.16 to 0.18 keep it in an
  SQLAlchemy table of a database of its own, which a test's transaction does not
  roll back, and whose ``scheduled_time`` is a naive UTC time; so a queued job is
  made due now (:func:`run_queued_job_now`) by a Django UPDATE on 0.19 and an
  SQLAlchemy one before.
- The job storage hook is ``JobHook`` on 0.19 and ``StorageHook`` before it.
- ``Job.update_progress`` takes ``extra_metadata`` from 0.18 on.
- morango before Kolibri 0.19 marks most store records clean in bulk while
  deserializing, so records cannot be counted one by one there.
- Kolibri 0.16 runs Django 1.11: an app's ``AppConfig`` is used only when the
  package names it in ``default_app_config``, ``CommandError`` takes no
  ``returncode``, and a connection has no ``execute_wrappers``, so a request's
  single statements cannot be watched (:data:`STATEMENTS_CAN_BE_WRAPPED`).

Kolibri imports the plugin before Django is configured, so only what needs no
settings (Kolibri's version and task hooks, Django's version and management base
classes) is imported at module level here; job storage is imported when used.
"""

import contextlib
import datetime
import functools
import inspect
import sys
from collections import namedtuple

from django import VERSION as DJANGO_VERSION
from django.core.management.base import BaseCommand as _DjangoBaseCommand
from django.core.management.base import CommandError as _DjangoCommandError
from kolibri import VERSION as KOLIBRI_VERSION
from kolibri.core.tasks import hooks as _task_hooks

__all__ = [
    "KOLIBRI_LINE",
    "JobHook",
    "JobRow",
    "JOBS_IN_DJANGO",
    "sqlalchemy_job_table",
    "job_rows",
    "insert_job",
    "jobs_in_states",
    "after_job_storage_commit",
    "aware_utc",
    "parse_time",
    "update_job_progress",
    "COUNTS_DESERIALIZED_RECORDS",
    "BaseCommand",
    "CommandError",
    "run_queued_job_now",
    "queue_reserved_job",
    "delete_reserved_job",
    "take_over_reserved_job",
    "job_storage_advisory_connection",
    "STATEMENTS_CAN_BE_WRAPPED",
    "workers_are_handed_a_log_queue",
    "immediate_sqlite_backend",
]

#: The running Kolibri's release line, e.g. ``(0, 19)``.
KOLIBRI_LINE = tuple(KOLIBRI_VERSION[:2])

#: Kolibri's hook on job storage changes: ``JobHook`` from 0.19, ``StorageHook`` before.
JobHook = getattr(_task_hooks, "JobHook", None) or _task_hooks.StorageHook

#: Whether job storage is Kolibri's Django model ``kolibri.core.tasks.models.Job``
#: (0.19) rather than an SQLAlchemy table (0.16 to 0.18).
JOBS_IN_DJANGO = KOLIBRI_LINE >= (0, 19)

#: Whether morango saves each store record as it deserializes it, so a stage can
#: count them live. morango as shipped before Kolibri 0.19 (0.8.3 and older) marks
#: the records of most models clean with one UPDATE at the end of each model.
COUNTS_DESERIALIZED_RECORDS = KOLIBRI_LINE >= (0, 19)

JobRow = namedtuple(
    "JobRow",
    (
        "id",
        "state",
        "func",
        "queue",
        "saved_job",
        "scheduled_time",
        "worker_host",
        "worker_process",
        "worker_extra",
    ),
)
JobRow.__doc__ = """
One row of Kolibri's job storage, the same on every line; ``scheduled_time`` is
timezone-aware (UTC).
"""


def aware_utc(value):
    """
    :param value: A time from job storage: naive UTC before Kolibri 0.19, aware after
    :type value: datetime.datetime|None
    :return: The same time, timezone-aware
    :rtype: datetime.datetime|None
    """
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=datetime.timezone.utc)


def parse_time(value):
    """
    A time the plugin stored as text in a job's metadata (``isoformat``), aware;
    ``None`` for none or for text that is not a time.

    :rtype: datetime.datetime|None
    """
    from django.utils.dateparse import parse_datetime

    try:
        return aware_utc(parse_datetime(value)) if value else None
    except (TypeError, ValueError):
        return None


def _row(orm_job):
    return JobRow(
        id=orm_job.id,
        state=orm_job.state,
        func=orm_job.func,
        queue=orm_job.queue,
        saved_job=orm_job.saved_job,
        scheduled_time=aware_utc(orm_job.scheduled_time),
        worker_host=orm_job.worker_host,
        worker_process=orm_job.worker_process,
        worker_extra=orm_job.worker_extra,
    )


def sqlalchemy_job_table():
    from kolibri.core.tasks.main import job_storage
    from kolibri.core.tasks.storage import ORMJob

    return job_storage.engine, ORMJob.__table__


def job_rows(queue=None, func=None, job_id=None, state=None):
    """
    Read job storage's rows directly (what :meth:`Storage.filter_jobs` hides: when
    a job was scheduled, and which worker runs it).

    :rtype: list[JobRow]
    """
    if JOBS_IN_DJANGO:
        from kolibri.core.tasks.models import Job as ORMJob

        queryset = ORMJob.objects.all()
        filters = (("queue", queue), ("func", func), ("id", job_id), ("state", state))
        for field, value in filters:
            if value is not None:
                queryset = queryset.filter(**{field: value})
        return [_row(orm_job) for orm_job in queryset]
    engine, table = sqlalchemy_job_table()
    query = table.select()
    filters = (("queue", queue), ("func", func), ("id", job_id), ("state", state))
    for column, value in filters:
        if value is not None:
            query = query.where(table.c[column] == value)
    with engine.connect() as connection:
        return [_row(orm_job) for orm_job in connection.execute(query)]


def insert_job(job, priority, queue, reserved_by=None):
    """
    Add ``job`` to job storage as QUEUED, only if no row has its id: Kolibri's own
    enqueue overwrites a finished job of the same id, which would run its work
    again. Kolibri's scheduled-job hooks run as after its own enqueue.

    With ``reserved_by``, the job is added PENDING instead, which no worker runs,
    recording that text in its ``worker_extra`` (which process reserved it) until
    :func:`queue_reserved_job` queues it.

    :type job: kolibri.core.tasks.job.Job
    :param reserved_by: ``worker_extra`` text for a reserved job
    :return: Whether the job was added
    :rtype: bool
    """
    from kolibri.core.tasks.job import State
    from kolibri.core.tasks.main import job_storage

    job.state = State.QUEUED if reserved_by is None else State.PENDING
    now = datetime.datetime.now(datetime.timezone.utc)
    columns = dict(
        id=job.job_id,
        state=job.state,
        func=job.func,
        priority=priority,
        queue=queue,
        interval=0,
        repeat=0,
        saved_job=job.to_json(),
        worker_extra=reserved_by,
    )
    if JOBS_IN_DJANGO:
        from django.db import IntegrityError
        from django.db import transaction
        from kolibri.core.tasks.models import Job as ORMJob

        try:
            with transaction.atomic(using=ORMJob.objects.db):
                orm_job = ORMJob.objects.create(scheduled_time=now, **columns)
        except IntegrityError:
            return False
    else:
        from kolibri.core.tasks.storage import ORMJob
        from sqlalchemy.exc import IntegrityError

        orm_job = ORMJob(scheduled_time=now.replace(tzinfo=None), **columns)
        try:
            with job_storage.session_scope() as session:
                session.add(orm_job)
                session.flush()
                session.expunge(orm_job)
        except IntegrityError:
            return False
    if reserved_by is None:
        job_storage._run_scheduled_hooks(orm_job)
    return True


def _update_reserved(job_id, reserved_by, **values):
    """
    One conditional UPDATE of a PENDING job (reserved by ``reserved_by``, if given).

    :return: Whether the row was updated
    :rtype: bool
    """
    from kolibri.core.tasks.job import State

    if JOBS_IN_DJANGO:
        from kolibri.core.tasks.models import Job as ORMJob

        rows = ORMJob.objects.filter(id=job_id, state=State.PENDING)
        if reserved_by is not None:
            rows = rows.filter(worker_extra=reserved_by)
        return rows.update(**values) == 1
    engine, table = sqlalchemy_job_table()
    if "scheduled_time" in values:
        values["scheduled_time"] = values["scheduled_time"].replace(tzinfo=None)
    query = (
        table.update().where(table.c.id == job_id).where(table.c.state == State.PENDING)
    )
    if reserved_by is not None:
        query = query.where(table.c.worker_extra == reserved_by)
    with engine.begin() as connection:
        return connection.execute(query.values(**values)).rowcount == 1


def queue_reserved_job(job_id):
    """
    Queue a job added PENDING by :func:`insert_job`, due now, and run Kolibri's
    scheduled-job hooks as its own enqueue does. A job no longer PENDING (queued
    already, or gone) is left alone.

    :return: Whether the job was queued by this call
    :rtype: bool
    """
    from kolibri.core.tasks.job import Job
    from kolibri.core.tasks.job import State
    from kolibri.core.tasks.main import job_storage

    [row] = job_rows(job_id=job_id) or [None]
    if row is None or row.state != State.PENDING:
        return False
    # Kolibri reads a job's state from its saved JSON, the column from the row:
    # both change together, and nothing else writes a PENDING row
    job = Job.from_json(row.saved_job)
    job.state = State.QUEUED
    now = datetime.datetime.now(datetime.timezone.utc)
    if not _update_reserved(
        job_id,
        None,
        state=State.QUEUED,
        saved_job=job.to_json(),
        scheduled_time=now,
        worker_extra=None,
    ):
        return False
    try:
        orm_job = job_storage.get_orm_job(job_id)
    except Exception:  # JobNotFound: it already ran and was cleared
        return True
    job_storage._run_scheduled_hooks(orm_job)
    return True


def take_over_reserved_job(job_id, reserved_by, now_reserved_by):
    """
    Record another process as the one that reserved a PENDING job, if
    ``reserved_by`` still is.

    :return: Whether the job is now reserved by ``now_reserved_by``
    :rtype: bool
    """
    return _update_reserved(job_id, reserved_by, worker_extra=now_reserved_by)


def delete_reserved_job(job_id):
    """
    Remove a job added PENDING by :func:`insert_job` that will never be queued; a
    job queued meanwhile is left alone.

    :return: Whether the job was removed
    :rtype: bool
    """
    from kolibri.core.tasks.job import State

    if JOBS_IN_DJANGO:
        from kolibri.core.tasks.models import Job as ORMJob

        deleted, _ = ORMJob.objects.filter(id=job_id, state=State.PENDING).delete()
        return deleted == 1
    engine, table = sqlalchemy_job_table()
    query = (
        table.delete().where(table.c.id == job_id).where(table.c.state == State.PENDING)
    )
    with engine.begin() as connection:
        return connection.execute(query).rowcount == 1


@contextlib.contextmanager
def job_storage_advisory_connection():
    """
    Where job storage is on PostgreSQL, a connection to its database for session
    advisory locks, as a function ``execute(sql, key)``; on SQLite, ``None``. A
    connection on which a statement failed is closed as the block ends, which
    drops any lock it still holds.
    """
    failed = []

    def guarded(run):
        def execute(sql, key):
            try:
                run(sql, key)
            except Exception:
                failed.append(True)
                raise

        return execute

    if JOBS_IN_DJANGO:
        from django.db import connections
        from kolibri.core.tasks.models import Job as ORMJob

        connection = connections[ORMJob.objects.db]
        if connection.vendor != "postgresql":
            yield None
            return

        def run_in_django(sql, key):
            with connection.cursor() as cursor:
                cursor.execute(sql, [key])

        try:
            yield guarded(run_in_django)
        finally:
            if failed:
                connection.close()
        return
    engine, _ = sqlalchemy_job_table()
    if engine.dialect.name != "postgresql":
        yield None
        return
    raw = engine.raw_connection()

    def run_raw(sql, key):
        cursor = raw.cursor()
        try:
            cursor.execute(sql, (key,))
        finally:
            cursor.close()
        raw.commit()

    try:
        yield guarded(run_raw)
    finally:
        if failed:
            raw.invalidate()
        raw.close()


def after_job_storage_commit(orm_job, callback):
    """
    Call ``callback`` once the job storage transaction that is changing
    ``orm_job`` has committed. Kolibri 0.19 calls job hooks inside that
    transaction (a Django one, on job storage's database); before 0.19 it calls
    them after its SQLAlchemy session has committed, so the callback runs at once.
    """
    if JOBS_IN_DJANGO:
        from django.db import transaction

        transaction.on_commit(callback, using=orm_job._state.db)
        return
    callback()


def jobs_in_states(states, queue=None, func=None):
    """
    The jobs of job storage in any of ``states``, read in one query, so a job that
    moves between two of them while they are read is seen once: Kolibri's
    ``filter_jobs`` takes a list of states from 0.19 on, a single state before.

    :type states: list
    :rtype: list[kolibri.core.tasks.job.Job]
    """
    from kolibri.core.tasks.main import job_storage

    if JOBS_IN_DJANGO:
        return job_storage.filter_jobs(queue=queue, func=func, state=list(states))
    engine, table = sqlalchemy_job_table()
    query = table.select().where(table.c.state.in_(list(states)))
    for column, value in (("queue", queue), ("func", func)):
        if value is not None:
            query = query.where(table.c[column] == value)
    with engine.connect() as connection:
        return [job_storage._orm_to_job(row) for row in connection.execute(query)]


@functools.lru_cache(maxsize=None)
def _progress_takes_metadata():
    from kolibri.core.tasks.job import Job

    return "extra_metadata" in inspect.signature(Job.update_progress).parameters


def update_job_progress(job, progress, total_progress, extra_metadata):
    """
    Save a job's progress and its ``extra_metadata``: in one write where Kolibri
    takes both at once (0.18 on), in two before, the metadata first so that no
    reader sees the new progress with the old status text.

    :type job: kolibri.core.tasks.job.Job
    :type extra_metadata: dict
    """
    if _progress_takes_metadata():
        job.update_progress(progress, total_progress, extra_metadata=extra_metadata)
        return
    job.extra_metadata.update(extra_metadata)
    job.save_meta()
    job.update_progress(progress, total_progress)


# Django 1.11 (Kolibri 0.16) ------------------------------------------------------

if DJANGO_VERSION < (3, 2):
    #: Django before 3.2 uses an app's own ``AppConfig`` only when named here.
    default_app_config = "kolibri_sync_extras_plugin.apps.SyncExtrasConfig"


@functools.lru_cache(maxsize=None)
def workers_are_handed_a_log_queue():
    """
    Whether Kolibri gives its job workers the server's log queue (0.18 on).

    With ``[Tasks] USE_WORKER_MULTIPROCESSING`` on, that queue is a
    ``multiprocessing.Queue`` sent with every job to the process pool, which
    cannot pickle it: each job is marked SELECTED and never starts.

    :rtype: bool
    """
    from kolibri.core.tasks.worker import Worker

    return "log_queue" in inspect.signature(Worker.__init__).parameters


def immediate_sqlite_backend():
    """
    :return: Kolibri's SQLite database wrapper class that begins every transaction
        with ``BEGIN IMMEDIATE`` (0.19 on), or ``None`` on a line without one
    """
    try:
        from kolibri.deployment.default.db.backends.sqlite3.base import DatabaseWrapper
    except ImportError:
        return None
    return DatabaseWrapper


#: Whether a connection runs each statement through ``execute_wrappers`` (Django
#: 2.0 on, so Kolibri 0.17 on).
STATEMENTS_CAN_BE_WRAPPED = DJANGO_VERSION >= (2, 0)


if "returncode" in inspect.signature(_DjangoCommandError.__init__).parameters:
    CommandError = _DjangoCommandError
    BaseCommand = _DjangoBaseCommand
else:

    class CommandError(_DjangoCommandError):
        """``CommandError`` with the exit status Django 3.1 added, for Django 1.11."""

        def __init__(self, *args, returncode=1, **kwargs):
            self.returncode = returncode
            super().__init__(*args, **kwargs)

    class BaseCommand(_DjangoBaseCommand):
        """Exits with a :class:`CommandError`'s ``returncode`` on Django 1.11 too."""

        def execute(self, *args, **options):
            try:
                return super().execute(*args, **options)
            except CommandError as e:
                # run_from_argv would exit 1 whatever the error says
                if not getattr(self, "_called_from_command_line", False):
                    raise
                self.stderr.write("CommandError: {}".format(e))
                sys.exit(e.returncode)


def run_queued_job_now(job_id, priority):
    """
    Make a job that is still QUEUED due now, at ``priority``: one conditional
    UPDATE, so a job a worker has meanwhile selected or started is left alone
    (Kolibri's ``schedule`` would set a selected job back to QUEUED, to be run
    twice). Only the row's place in the queue changes, so Kolibri's scheduled-job
    hooks are not run.

    :param priority: A ``kolibri.core.tasks.constants.Priority`` value
    :return: Whether the job was still queued and now is due
    :rtype: bool
    """
    from kolibri.core.tasks.job import State

    now = datetime.datetime.now(datetime.timezone.utc)
    if JOBS_IN_DJANGO:
        from kolibri.core.tasks.models import Job as ORMJob

        updated = ORMJob.objects.filter(id=job_id, state=State.QUEUED).update(
            scheduled_time=now, priority=priority
        )
        return updated == 1
    engine, table = sqlalchemy_job_table()
    query = (
        table.update()
        .where(table.c.id == job_id)
        .where(table.c.state == State.QUEUED)
        .values(scheduled_time=now.replace(tzinfo=None), priority=priority)
    )
    with engine.begin() as connection:
        return connection.execute(query).rowcount == 1
