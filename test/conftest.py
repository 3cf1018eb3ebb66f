"""
Fixtures for the in-process suite: a real Kolibri database with a facility, real
morango sync sessions, Kolibri's real job storage, and a live HTTP server on
127.0.0.1 that a test drives the way a morango client would.
"""

import contextlib
import json
import time
import uuid

import pytest
from django.utils import timezone
from kolibri.core.auth.models import Classroom
from kolibri.core.auth.models import Facility
from kolibri.core.auth.models import FacilityUser
from kolibri.core.auth.models import Membership
from kolibri.core.tasks.main import job_storage
from kolibri.core.tasks.storage import Storage
from kolibri.utils.conf import OPTIONS
from morango.constants import transfer_stages
from morango.constants.capabilities import ASYNC_OPERATIONS
from morango.constants.capabilities import FSIC_V2_FORMAT
from morango.models.core import SyncSession
from morango.utils import CAPABILITIES_CLIENT_HEADER

from kolibri_sync_extras_plugin.jobs import SYNC_EXTRAS_QUEUE

ALL_DATABASES = "__all__"


@contextlib.contextmanager
def sync_options(**values):
    """Set ``[Sync]`` options for the duration of a block, as options.ini would."""
    section = OPTIONS["Sync"]
    saved = {key: section[key] for key in values}
    section.update(values)
    try:
        yield
    finally:
        section.update(saved)


@pytest.fixture(autouse=True)
def stages_never_inline():
    """
    Every configured stage goes to the background, however small: the suite's
    facility is small enough to run inline otherwise. Tests of the fast path set
    ``INLINE_STAGE_RECORDS`` themselves.
    """
    with sync_options(INLINE_STAGE_RECORDS=0):
        yield


@pytest.fixture
def background_everything():
    with sync_options(BACKGROUND_INITIALIZATION=True, BACKGROUND_FINALIZATION=True):
        yield


FACILITY_NAME = "Riverside School"
LEARNERS = 12


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


@pytest.fixture
def facility(db):
    # a transactional (live server) test flushes the database when it ends
    return Facility.objects.filter(name=FACILITY_NAME).first() or _create_facility()


@pytest.fixture
def server_sync_session(facility):
    """A sync session as morango's server creates it when a full-facility client connects."""
    certificate = facility.dataset.get_root_certificate()
    return SyncSession.objects.create(
        id=uuid.uuid4().hex,
        is_server=True,
        active=True,
        profile=certificate.profile,
        client_certificate=certificate,
        server_certificate=certificate,
        connection_kind="network",
        connection_path="http://127.0.0.1",
        client_instance_id=uuid.uuid4(),
        last_activity_timestamp=timezone.now(),
    )


class MorangoHttpClient(object):
    """
    Speaks morango's transfer session API, as a morango client does, with or without
    the ``ASYNC_OPERATIONS`` capability. Over real HTTP when given a live server's
    URL; otherwise through Django's test client, which runs the same request cycle
    (request signals included) without a socket.
    """

    PATH = "/api/morango/v1/transfersessions/"

    def __init__(self, base_url=None, capabilities=(ASYNC_OPERATIONS, FSIC_V2_FORMAT)):
        header = " ".join(capabilities)
        if base_url is None:
            from django.test import Client

            self.base_url = ""
            self.session = _DjangoClientSession(Client(), header)
        else:
            from requests import Session

            self.base_url = base_url.rstrip("/")
            self.session = Session()
            self.session.headers[CAPABILITIES_CLIENT_HEADER] = header

    def _url(self, transfer_session_id=None):
        url = self.base_url + self.PATH
        if transfer_session_id is not None:
            url += "{}/".format(transfer_session_id)
        return url

    def create(self, sync_session, push, records_total=None, client_fsic="{}"):
        data = {
            "id": uuid.uuid4().hex,
            "filter": sync_session.server_certificate.get_root().id,
            "push": push,
            "sync_session_id": sync_session.id,
            "client_fsic": client_fsic,
        }
        if records_total is not None:
            data["records_total"] = records_total
        return _json(self.session.post(self._url(), json=data))

    def get(self, transfer_session_id):
        return _json(self.session.get(self._url(transfer_session_id)))

    def proceed_to(self, transfer_session_id, stage, **data):
        data["transfer_stage"] = stage
        return _json(self.session.patch(self._url(transfer_session_id), json=data))

    def close(self, transfer_session_id):
        response = self.session.delete(self._url(transfer_session_id))
        assert response.status_code == 204, response.content
        return response


def _json(response):
    assert response.status_code < 300, (response.status_code, response.content)
    return response.json()


class _DjangoClientSession(object):
    """The subset of a ``requests`` session the client above uses, on Django's test client."""

    def __init__(self, client, capabilities_header):
        self.client = client
        self.extra = {
            "HTTP_" + CAPABILITIES_CLIENT_HEADER.upper().replace("-", "_"): (
                capabilities_header
            )
        }

    def post(self, url, json):
        return self.client.post(
            url, json, content_type="application/json", **self.extra
        )

    def patch(self, url, json):
        return self.client.patch(
            url, json, content_type="application/json", **self.extra
        )

    def get(self, url):
        return self.client.get(url, **self.extra)

    def delete(self, url):
        return self.client.delete(url, **self.extra)


@pytest.fixture
def async_client():
    return MorangoHttpClient()


@pytest.fixture
def blocking_client():
    """A client without ``ASYNC_OPERATIONS``: it cannot poll, so it waits on each request."""
    return MorangoHttpClient(capabilities=(FSIC_V2_FORMAT,))


@pytest.fixture
def live_async_client(live_server):
    return MorangoHttpClient(live_server.url)


def stage_jobs():
    """The plugin's jobs in Kolibri's job storage."""
    return job_storage.filter_jobs(queue=SYNC_EXTRAS_QUEUE)


def no_stage_jobs_after(seconds=1.0):
    """
    Whether the plugin still has no job once a request has had time to finish: an
    immediate look could miss a job enqueued at the end of the request.
    """
    time.sleep(seconds)
    return stage_jobs() == []


def queued_stage_jobs(expected=1, timeout=10):
    """
    Wait for the plugin's queued jobs: the server enqueues a stage's job once the
    request that asked for it has finished, which may be just after the client has
    read the response.
    """
    deadline = time.monotonic() + timeout
    while True:
        jobs = job_storage.filter_jobs(queue=SYNC_EXTRAS_QUEUE, state="QUEUED")
        if len(jobs) >= expected or time.monotonic() > deadline:
            return jobs
        time.sleep(0.05)


def run_stage_jobs(expected=1):
    """
    Run the plugin's queued jobs the way a Kolibri worker does (``Job.execute``:
    state changes, job hooks, failure recording), in this thread.

    :return: The jobs, as job storage holds them afterwards
    """
    ran = []
    for job in queued_stage_jobs(expected):
        job.execute()
        ran.append(job.job_id)
    return [job_storage.get_job(job_id) for job_id in ran]


# A push of real records: the facility's own, as the server sends them, edited on a
# client and pushed back through morango's buffer API.

#: The FSIC of a client that holds no facility data yet.
EMPTY_FSIC = '{"super": {}, "sub": {}}'
BUFFERS_PATH = "/api/morango/v1/buffers/"


@pytest.fixture
def progress_updates(monkeypatch):
    """Every progress update saved to Kolibri's job storage, in order."""
    updates = []
    save = Storage.update_job_progress

    def recording(storage, job_id, progress, total_progress, extra_metadata=None):
        updates.append(
            {
                "progress": progress,
                "total": total_progress,
                "text": (extra_metadata or {}).get("status_text"),
            }
        )
        return save(storage, job_id, progress, total_progress, extra_metadata)

    monkeypatch.setattr(Storage, "update_job_progress", recording)
    return updates


def _facility_records(client, sync_session):
    """The facility's records as the server sends them to a client that has none."""
    pull = client.create(sync_session, push=False)
    client.proceed_to(pull["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC)
    client.proceed_to(pull["id"], transfer_stages.QUEUING)
    response = client.session.get(
        "{}{}?transfer_session_id={}".format(client.base_url, BUFFERS_PATH, pull["id"])
    )
    assert response.status_code == 200, response.content
    client.close(pull["id"])
    return response.json()


def _edited_by_a_client(records, push_id, client_instance):
    """Each user record renamed on a client that had synced the facility before."""
    edited = []
    for record in records:
        fields = json.loads(record["serialized"])
        fields["full_name"] = "Renamed {}".format(fields["username"])
        rmcb_list = [
            dict(rmcb, transfer_session=push_id)
            for rmcb in record["rmcb_list"]
            if rmcb["instance_id"] != client_instance
        ]
        rmcb_list.append(
            {
                "transfer_session": push_id,
                "model_uuid": record["model_uuid"],
                "instance_id": client_instance,
                "counter": 1,
            }
        )
        edited.append(
            dict(
                record,
                serialized=json.dumps(fields),
                last_saved_instance=client_instance,
                last_saved_counter=1,
                transfer_session=push_id,
                rmcb_list=rmcb_list,
            )
        )
    return edited


def _push(client, sync_session, records, client_instance):
    push = client.create(sync_session, push=True, records_total=len(records))
    client_fsic = json.dumps(
        {
            "super": {},
            "sub": {
                sync_session.server_certificate.get_root().id: {client_instance: 1}
            },
        }
    )
    client.proceed_to(push["id"], transfer_stages.SERIALIZING, client_fsic=client_fsic)
    client.proceed_to(push["id"], transfer_stages.QUEUING)
    response = client.session.post(
        client.base_url + BUFFERS_PATH,
        _edited_by_a_client(records, push["id"], client_instance),
    )
    assert response.status_code == 201, response.content
    return push


@pytest.fixture
def pushed_learner_edits(async_client, server_sync_session):
    """
    A client's push of every learner, renamed, received by the server and waiting
    for its background dequeuing job.
    """
    records = _facility_records(async_client, server_sync_session)
    learners = [
        r for r in records if r["model_name"] == FacilityUser.morango_model_name
    ]
    with sync_options(BACKGROUND_FINALIZATION=True):
        push = _push(async_client, server_sync_session, learners, uuid.uuid4().hex)
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
    from morango.constants import transfer_stages

    transfer = async_client.create(server_sync_session, push=False)
    async_client.proceed_to(
        transfer["id"],
        transfer_stages.SERIALIZING,
        client_fsic='{"super": {}, "sub": {}}',
    )
    return transfer


@pytest.fixture
def failed_queuing(background_everything, async_client, server_sync_session):
    """A pull whose queuing job failed: a client_fsic that is not JSON makes it raise."""
    from morango.constants import transfer_stages

    transfer = async_client.create(server_sync_session, push=False)
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic="not json"
    )
    run_stage_jobs()
    async_client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    [job] = run_stage_jobs()
    transfer["job_id"] = job.job_id
    return transfer
