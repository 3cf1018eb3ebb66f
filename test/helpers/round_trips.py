"""
What every end-to-end round trip must show, whichever instances ran it: the
lab's round trip outcome (:func:`sync_lab.harness.scenario.round_trip`) checked
once here.
"""


def assert_counted_alike(outcome, kind):
    """Both sides hold as many records of ``kind`` once the round trip is over."""
    assert outcome.counts, "the round trip ended before counting"
    server, client = outcome.counts["server"][kind], outcome.counts["client"][kind]
    assert server == client, outcome.counts


def assert_server_has_both_sides_learners(outcome):
    """The server holds its own learners, the client's, and its super user."""
    created = outcome.facility["created"]["users"] + outcome.client_created["users"]
    assert outcome.counts["server"]["users"] == created + 1, outcome.counts


def completed_stage_jobs(outcome):
    """
    :return: ``(direction, stage)`` of every stage job of the server that completed
    :rtype: set
    """
    return {
        (job["direction"], job["stage"])
        for job in outcome.jobs
        if job["job_state"] == "COMPLETED"
    }
