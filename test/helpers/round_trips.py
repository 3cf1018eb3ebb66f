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


def assert_no_row_twice(*states):
    """No side holds any record twice (``states`` from ``sync_states``)."""
    for state in states:
        assert set(state["duplicates"].values()) == {0}, state["duplicates"]


def assert_stopped_at_failed_stage(sync, stage):
    """The client's sync stopped with an error at the server's errored ``stage``."""
    assert sync.returncode not in (0, None), sync.tail()
    assert "Stage `{}` failed".format(stage) in sync.output


def assert_job_failed_as_worker_gone(server_state, job_id):
    """The stage job ``job_id`` was failed because its worker process died."""
    [job] = [job for job in server_state["jobs"] if job["job_id"] == job_id]
    assert job["job_state"] == "FAILED"
    assert "WorkerGone" in (job["detail"] or ""), job


def failed_sync_message(sync, server_log):
    """
    Why a client's sync failed: its exit and last error on the first line, which
    is all a run's closing summary keeps, then the client's output and the
    server's log.
    """
    return "{}\n\nclient:\n{}\n\nserver log:\n{}".format(
        sync.reason(), sync.tail(), server_log
    )


def failed_round_trip_sync(outcome, sync):
    """:func:`failed_sync_message` for a sync of a round trip, with its server's log."""
    return failed_sync_message(sync, outcome.server.log_tail())
