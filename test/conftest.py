"""
Fixtures for the in-process suite: a real Kolibri database with a facility, real
morango sync sessions, Kolibri's real job storage, and a client that drives the
server's transfer session API the way a morango client would. What they use is
in :mod:`test.helpers`.
"""

import contextlib
import uuid

import pytest
from kolibri.core.auth.models import Classroom
from kolibri.core.auth.models import Facility
from kolibri.core.auth.models import FacilityUser
from kolibri.core.auth.models import Membership
from kolibri.core.tasks.storage import Storage
from morango.constants import transfer_stages
from morango.constants.capabilities import FSIC_V2_FORMAT

from .helpers.constants import EMPTY_FSIC
from .helpers.constants import FACILITY_NAME
from .helpers.constants import LEARNERS
from .helpers.job_rows import delete_job_rows
from .helpers.job_rows import job_storage_in_test_transaction
from .helpers.jobs import run_stage_jobs
from .helpers.morango_client import MorangoHttpClient
from .helpers.options import sync_options
from .helpers.records import facility_records
from .helpers.records import push_edited
from .helpers.sync_sessions import new_server_sync_session


@pytest.fixture(autouse=True)
def test_transaction_out_of_the_writers_line(request):
    """
    A test runs in one transaction of its own (pytest-django's default), which on
    Kolibri 0.19 holds the writers' turn of the main database for the whole test
    (see :mod:`kolibri_sync_extras_plugin.write_queue`). It is not one of the
    server's writers: the threads a test starts as requests or jobs must not wait
    for it.
    """
    if "_django_db_marker" not in request.fixturenames:
        # pytest-django is off (the end-to-end run): no test transaction
        return
    # after pytest-django has opened the test's transaction, if the test has one
    request.getfixturevalue("_django_db_marker")

    from django.db import connection

    from kolibri_sync_extras_plugin.write_queue import give_turn_back

    give_turn_back(connection)


@pytest.fixture(autouse=True)
def stages_never_inline():
    """
    Every configured stage goes to the background, however small: the suite's
    facility is small enough to run inline otherwise. Tests of the fast path set
    ``INLINE_STAGE_RECORDS`` themselves.
    """
    with sync_options(INLINE_STAGE_RECORDS=0):
        yield


@pytest.fixture(autouse=True)
def every_poll_checked(monkeypatch):
    """
    Every poll checks its stage's job, as the tests poll and then assert what the
    check did; a test of how often a server checks sets the interval itself.
    """
    from kolibri_sync_extras_plugin.request import poll

    monkeypatch.setattr(poll, "POLL_CHECK_SECONDS", 0.0)
    poll.forget_checks()
    yield
    poll.forget_checks()


@pytest.fixture(autouse=True)
def polls_answered_at_once(monkeypatch):
    """
    No poll is held: the suite's tests poll and assert at once, in a process that
    runs their stage jobs. The hold's own tests turn it on themselves.
    """
    import threading

    from kolibri_sync_extras_plugin import poll_hold

    monkeypatch.setattr(poll_hold, "POLL_HOLD_SECONDS", 0.0)
    monkeypatch.setattr(poll_hold, "_runs_stage_jobs", threading.Event())
    # each test starts with no session remembered as waiting on this process
    monkeypatch.setattr(poll_hold, "_held_sessions", {})
    monkeypatch.setattr(poll_hold, "_settled_events", {})


@pytest.fixture
def background_everything():
    with sync_options(BACKGROUND_INITIALIZATION=True, BACKGROUND_FINALIZATION=True):
        yield


def _create_facility():
    facility = Facility.objects.create(name=FACILITY_NAME)
    classroom = Classroom.objects.create(name="Class A", parent=facility)
    for number in range(LEARNERS):
        user = FacilityUser.objects.create(
            username="learner{}".format(number), facility=facility
        )
        Membership.objects.create(user=user, collection=classroom)
    return facility


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    # a facility's root certificate takes seconds of pure-Python RSA to generate,
    # so the suite shares one; each test's transaction leaves it as it was
    with django_db_blocker.unblock():
        _create_facility()


@pytest.fixture(autouse=True)
def empty_job_storage():
    """
    Start each test with no jobs. Before Kolibri 0.19 job storage is a database of
    its own that a test's transaction does not roll back.
    """
    if not job_storage_in_test_transaction():
        delete_job_rows()
    yield


@pytest.fixture
def facility(db):
    # a transactional test flushes the database when it ends
    return Facility.objects.filter(name=FACILITY_NAME).first() or _create_facility()


@pytest.fixture
def server_sync_session(facility):
    """A sync session as morango's server creates it when a full-facility client connects."""
    return new_server_sync_session(facility)


@pytest.fixture
def async_client():
    return MorangoHttpClient()


@pytest.fixture
def blocking_client():
    """A client without ``ASYNC_OPERATIONS``: it cannot poll, so it waits on each request."""
    return MorangoHttpClient(capabilities=(FSIC_V2_FORMAT,))


@pytest.fixture
def job_storage_commits(request):
    """
    A block after which what waits for job storage's transaction to commit runs:
    the test's own transaction would otherwise hold it back until the test ends.
    """
    if not job_storage_in_test_transaction():
        # before Kolibri 0.19 job storage commits on its own, hooks after it
        return contextlib.nullcontext
    from django.db import router
    from kolibri.core.tasks.models import Job as ORMJob

    alias = router.db_for_write(ORMJob)
    capture = request.getfixturevalue("django_capture_on_commit_callbacks")
    return lambda: capture(using=alias, execute=True)


@pytest.fixture
def pieces_of_three(monkeypatch):
    """Background deserializing commits three records at a time (see ``piecewise.runner``)."""
    from kolibri_sync_extras_plugin.piecewise import runner as piece_runner

    monkeypatch.setattr(piece_runner, "FIRST_PIECE_RECORDS", 3)
    monkeypatch.setattr(piece_runner, "MIN_PIECE_RECORDS", 3)
    monkeypatch.setattr(piece_runner, "MAX_PIECE_RECORDS", 3)


@pytest.fixture
def progress_updates(monkeypatch):
    """Every progress update saved to Kolibri's job storage, in order."""
    updates = []
    save = Storage.update_job_progress

    def recording(storage, job_id, progress, total_progress, *args, **kwargs):
        # before Kolibri 0.18 the metadata is saved on its own, just before
        metadata = kwargs.get("extra_metadata", args[0] if args else None)
        if metadata is None:
            metadata = storage.get_job(job_id).extra_metadata
        updates.append(
            {
                "progress": progress,
                "total": total_progress,
                "text": metadata.get("status_text"),
            }
        )
        return save(storage, job_id, progress, total_progress, *args, **kwargs)

    monkeypatch.setattr(Storage, "update_job_progress", recording)
    return updates


@pytest.fixture
def pushed_learner_edits(async_client, server_sync_session):
    """
    A client's push of every learner, renamed, received by the server and waiting
    for its background dequeuing job.
    """
    records = facility_records(async_client, server_sync_session)
    learners = [
        r for r in records if r["model_name"] == FacilityUser.morango_model_name
    ]
    with sync_options(BACKGROUND_FINALIZATION=True):
        push = push_edited(
            async_client, server_sync_session, learners, uuid.uuid4().hex
        )
        async_client.proceed_to(push["id"], transfer_stages.DEQUEUING)
        yield push


@pytest.fixture
def pushed_and_dequeued(pushed_learner_edits, async_client):
    """The push above, dequeued, with its deserializing job queued."""
    run_stage_jobs()
    async_client.proceed_to(pushed_learner_edits["id"], transfer_stages.DESERIALIZING)
    return pushed_learner_edits


@pytest.fixture
def pull_at_serializing(background_everything, async_client, server_sync_session):
    """A pull whose server has just handed its serializing stage to a queued job."""
    transfer = async_client.create(server_sync_session, push=False)
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    return transfer


@pytest.fixture
def failed_queuing(background_everything, async_client, server_sync_session):
    """A pull whose queuing job failed: a client_fsic that is not JSON makes it raise."""
    transfer = async_client.create(server_sync_session, push=False)
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic="not json"
    )
    run_stage_jobs()
    async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    [job] = run_stage_jobs()
    transfer["job_id"] = job.job_id
    return transfer
