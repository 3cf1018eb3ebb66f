"""
The words Kolibri's task list, the tasks API and the status command use for a
background stage: one place, so every view of a stage says the same thing.
"""

from kolibri.core.tasks.job import State
from morango.constants import transfer_stages

from ..stage_status import reason_not_run

__all__ = ["facility_label", "describe", "describe_job"]

_STAGE_LABELS = dict(transfer_stages.CHOICES)


def _label(stage):
    return str(_STAGE_LABELS.get(stage, stage or "stage"))


def facility_label(metadata):
    """
    :param metadata: A stage job's ``extra_metadata``
    :return: The facility a stage job syncs, as people should read it
    :rtype: str
    """
    return (
        metadata.get("facility_name")
        or metadata.get("dataset_id")
        or "unknown facility"
    )


def describe(metadata, state, progress=0, total_progress=0, result=None):
    """
    The one place that words a background stage's status, for the job's
    ``status_fn`` and for the text the running job stores in its metadata.

    :param metadata: The job's ``extra_metadata``
    :type metadata: dict
    :param state: A ``kolibri.core.tasks.job.State`` value
    :param progress: The job's progress
    :param total_progress: The job's total progress
    :param result: The job's result, once it has completed
    :rtype: str
    """
    stage = _label(metadata.get("stage"))
    facility = facility_label(metadata)
    records = metadata.get("records")
    if state == State.FAILED:
        if metadata.get("error"):
            return "{} failed for {}: {}".format(stage, facility, metadata["error"])
        return "{} failed for {}".format(stage, facility)
    if state in (State.CANCELED, State.CANCELING):
        return "{} cancelled for {}".format(stage, facility)
    if state not in (State.RUNNING, State.COMPLETED):
        return "{} for {}: waiting for a worker".format(stage, facility)
    not_run = metadata.get("not_run")
    if not not_run and state == State.COMPLETED:
        not_run = reason_not_run(result)
    if not_run:
        return "{} not run for {}: {}".format(stage, facility, not_run)
    if state == State.COMPLETED or metadata.get("finished_at"):
        if records is None:
            return "{} done for {}".format(stage, facility)
        return "{} done for {}: {:,} records".format(stage, facility, records)
    if metadata.get("counted_live"):
        return "{} {:,} / {:,} records for {}".format(
            stage, progress, total_progress, facility
        )
    if records is not None:
        return "{} {:,} records for {}".format(stage, records, facility)
    return "{} for {}".format(stage, facility)


def describe_job(job):
    """
    :type job: kolibri.core.tasks.job.Job
    :rtype: str
    """
    return describe(
        job.extra_metadata, job.state, job.progress, job.total_progress, job.result
    )
