"""
Job storage rows changed behind Kolibri's back, as tests need them: a job that
vanishes, a worker that took a job, a time moved. Before Kolibri 0.19 job storage
is a SQLAlchemy database of its own; from 0.19 a Django model.
"""

import datetime

from kolibri_sync_extras_plugin.compat import JOBS_IN_DJANGO
from kolibri_sync_extras_plugin.compat import sqlalchemy_job_table


def delete_job_rows(job_id=None):
    """
    Delete job storage rows without Kolibri's storage hooks seeing it: a job that
    vanishes some other way. Every row if ``job_id`` is ``None``.
    """
    if JOBS_IN_DJANGO:
        from kolibri.core.tasks.models import Job as ORMJob

        queryset = ORMJob.objects.all()
        if job_id is not None:
            queryset = queryset.filter(id=job_id)
        queryset.delete()
        return
    engine, table = sqlalchemy_job_table()
    query = table.delete()
    if job_id is not None:
        query = query.where(table.c.id == job_id)
    with engine.begin() as connection:
        connection.execute(query)


def update_job_row(job_id, **fields):
    """
    Change columns of a job storage row without Kolibri's storage hooks seeing it,
    e.g. ``update_job_row(job_id, state="RUNNING", worker_process="123")``.

    :param fields: Column values; times timezone-aware
    """
    if JOBS_IN_DJANGO:
        from kolibri.core.tasks.models import Job as ORMJob

        ORMJob.objects.filter(id=job_id).update(**fields)
        return
    values = {
        column: (
            value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            if isinstance(value, datetime.datetime)
            else value
        )
        for column, value in fields.items()
    }
    engine, table = sqlalchemy_job_table()
    with engine.begin() as connection:
        connection.execute(table.update().where(table.c.id == job_id).values(**values))


def job_storage_in_test_transaction():
    """
    :return: Whether a Django test's transaction also rolls back job storage; where
        it does not (before Kolibri 0.19), tests must empty job storage themselves
    :rtype: bool
    """
    return JOBS_IN_DJANGO
