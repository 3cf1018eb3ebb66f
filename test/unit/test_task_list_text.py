"""
What the task list says of a stage job that completed without running its stage:
the reason its result gives, read through the same keys the job wrote.
"""

from kolibri.core.tasks.job import State
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.job.task_list import describe
from kolibri_sync_extras_plugin.stage_status import not_run_result
from kolibri_sync_extras_plugin.stage_status import ran_result
from kolibri_sync_extras_plugin.stage_status import waiting_result

METADATA = {"stage": transfer_stages.DESERIALIZING, "facility_name": "Riverside"}


def test_describe__job_waiting_for_its_writers_turn__says_why_it_did_not_run():
    result = waiting_result(transfer_stages.DESERIALIZING, "another job is writing")

    text = describe(METADATA, State.COMPLETED, result=result)

    assert text == "Deserializing not run for Riverside: another job is writing"


def test_describe__stage_no_longer_waiting__says_why_it_did_not_run():
    result = not_run_result(transfer_stages.DESERIALIZING, "session was closed")

    text = describe(METADATA, State.COMPLETED, result=result)

    assert text == "Deserializing not run for Riverside: session was closed"


def test_describe__job_that_ran__done():
    result = ran_result(transfer_stages.DESERIALIZING, 1.5, None)

    assert describe(METADATA, State.COMPLETED, result=result) == (
        "Deserializing done for Riverside"
    )
