"""
A client that asks a server for stages in a loop, and what the lab needs to watch
the server bound it.

A certificate is all a client needs to open sync sessions; :func:`open_sync_sessions`
opens them directly in the server's database, as morango's server does after the
certificate exchange, and :func:`ask_for_stages` then drives morango's transfer
session API over HTTP the way a client would, one new pull per sync session (morango
resumes the open pull of a sync session rather than opening another).

The functions taking no ``server`` argument run inside the server instance (see
:meth:`~sync_lab.harness.instances.KolibriInstance.call`).
"""

import contextlib
import time
import uuid

__all__ = [
    "EMPTY_FSIC",
    "issue_certificate",
    "new_server_sync_session",
    "open_sync_sessions",
    "ask_for_stages",
    "ask_for_stages_at_once",
    "holding_the_writers_turn",
    "enqueue_kolibri_job",
    "wait_for_job",
    "wait_for_unfinished_stage_jobs",
    "stage_jobs_of_sessions",
]

_TRANSFER_SESSIONS = "/api/morango/v1/transfersessions/"
#: What a client with no facility data sends as its FSIC.
EMPTY_FSIC = '{"super": {}, "sub": {}}'


def issue_certificate(parent, user_id=None, keep_private_key=False, key=None):
    """
    Inside a server: sign a new certificate below ``parent`` as morango's
    certificate endpoint does for a client that asks with a user's credentials:
    full-facility, or single-user for ``user_id``. The private key stays with the
    client, so the server keeps none unless ``keep_private_key`` (a test that
    plays the client too, and signs certificates below this one). ``key`` is the
    client's key pair, a new one by default (generating one takes seconds where
    morango signs in pure Python).

    :type parent: morango.models.certificates.Certificate
    :rtype: morango.models.certificates.Certificate
    """
    import json

    from kolibri.core.auth.constants.morango_sync import ScopeDefinitions
    from morango.models.certificates import Certificate
    from morango.models.certificates import Key

    params = json.loads(parent.scope_params)
    dataset_id = params["dataset_id"]
    if user_id is None:
        scope, scope_params = ScopeDefinitions.FULL_FACILITY, {"dataset_id": dataset_id}
    else:
        scope = ScopeDefinitions.SINGLE_USER
        scope_params = {"dataset_id": dataset_id, "user_id": user_id}
    certificate = Certificate(
        parent=parent,
        profile=parent.profile,
        scope_definition_id=scope,
        scope_version=1,
        scope_params=json.dumps(scope_params),
        salt=uuid.uuid4().hex,
    )
    key = key or Key()
    certificate.public_key = Key(public_key_string=key.get_public_key_string())
    if keep_private_key:
        certificate.private_key = key
    certificate.id = certificate.calculate_uuid()
    parent.sign_certificate(certificate)
    certificate.check_certificate()
    certificate.save()
    return certificate


def new_server_sync_session(facility, client_instance_id, client_certificate=None):
    """
    Inside a server: a sync session as morango's server opens it, after the
    certificate exchange, with a full-facility client.

    :type facility: kolibri.core.auth.models.Facility
    :param client_instance_id: The instance id the client claims; a client may
        open many sync sessions, and claim any id in each
    :param client_certificate: The certificate the client signed the session
        with; the facility's root certificate by default
    :rtype: morango.models.core.SyncSession
    """
    from django.utils import timezone
    from morango.models.core import SyncSession

    certificate = facility.dataset.get_root_certificate()
    return SyncSession.objects.create(
        id=uuid.uuid4().hex,
        is_server=True,
        active=True,
        profile=certificate.profile,
        client_certificate=client_certificate or certificate,
        server_certificate=certificate,
        connection_kind="network",
        connection_path="http://127.0.0.1",
        client_instance_id=client_instance_id,
        last_activity_timestamp=timezone.now(),
    )


def open_sync_sessions(count, client_instance_id, facility_id=None):
    """
    Inside the server: open ``count`` sync sessions of one full-facility client.

    :return: The sync session ids, the filter a full-facility pull asks for, and
        the client's key as the caps count it
    :rtype: dict
    """
    from kolibri.core.auth.models import Facility

    facility = (
        Facility.objects.get(id=facility_id)
        if facility_id
        else Facility.get_default_facility()
    )
    from kolibri_sync_extras_plugin.request.identity import client_key

    sessions = [
        new_server_sync_session(facility, client_instance_id) for _ in range(count)
    ]
    return {
        "sync_session_ids": [session.id for session in sessions],
        "filter": facility.dataset.get_root_certificate().id,
        "client_key": client_key(sessions[0]) if sessions else None,
    }


def _client_http():
    """An HTTP session advertising ``ASYNC_OPERATIONS``, as current clients do."""
    import requests
    from morango.constants.capabilities import ASYNC_OPERATIONS
    from morango.constants.capabilities import FSIC_V2_FORMAT
    from morango.utils import CAPABILITIES_CLIENT_HEADER

    http = requests.Session()
    http.headers[CAPABILITIES_CLIENT_HEADER] = " ".join(
        (ASYNC_OPERATIONS, FSIC_V2_FORMAT)
    )
    return http


def _open_pull(http, url, sync_session_id, sync_filter):
    """:return: The id of a new pull of the sync session"""
    created = http.post(
        url,
        json={
            "id": uuid.uuid4().hex,
            "filter": sync_filter,
            "push": False,
            "sync_session_id": sync_session_id,
            "client_fsic": EMPTY_FSIC,
        },
        timeout=60,
    )
    created.raise_for_status()
    return created.json()["id"]


def _ask_to_serialize(http, url, transfer_session_id):
    """:return: The server's answer to a request to serialize the pull"""
    response = http.patch(
        "{}{}/".format(url, transfer_session_id),
        json={"transfer_stage": "serializing", "client_fsic": EMPTY_FSIC},
        timeout=120,
    )
    body = response.json() if response.content else {}
    return {
        "transfer_session_id": transfer_session_id,
        "status": response.status_code,
        "stage_status": body.get("transfer_stage_status"),
        "detail": body.get("detail"),
    }


def ask_for_stages(base_url, sync_session_ids, sync_filter):
    """
    For each sync session, open a pull and ask the server to serialize it, as fast
    as the server answers, advertising ``ASYNC_OPERATIONS`` as current clients do.

    :return: For each pull: ``{"transfer_session_id", "status", "stage_status",
        "detail"}`` of the serializing request
    :rtype: list
    """
    http = _client_http()
    url = base_url.rstrip("/") + _TRANSFER_SESSIONS
    return [
        _ask_to_serialize(
            http, url, _open_pull(http, url, sync_session_id, sync_filter)
        )
        for sync_session_id in sync_session_ids
    ]


def ask_for_stages_at_once(base_url, sync_session_ids, sync_filter):
    """
    Open a pull for each sync session, then ask the server to serialize all of
    them at the same moment, one thread each (released together by a barrier), so
    that a server of several processes counts them side by side.

    :return: As :func:`ask_for_stages`, in the order of ``sync_session_ids``
    :rtype: list
    """
    import threading

    url = base_url.rstrip("/") + _TRANSFER_SESSIONS
    opening = _client_http()
    transfer_session_ids = [
        _open_pull(opening, url, sync_session_id, sync_filter)
        for sync_session_id in sync_session_ids
    ]
    barrier = threading.Barrier(len(transfer_session_ids))
    answers = [None] * len(transfer_session_ids)

    def ask(index, transfer_session_id):
        http = _client_http()  # a connection of its own
        barrier.wait(timeout=60)
        answers[index] = _ask_to_serialize(http, url, transfer_session_id)

    threads = [
        threading.Thread(target=ask, args=(index, transfer_session_id))
        for index, transfer_session_id in enumerate(transfer_session_ids)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return answers


@contextlib.contextmanager
def holding_the_writers_turn(server):
    """
    Hold the plugin's writer lock of a SQLite ``server`` from the lab, so its stage
    jobs wait for their turn: they pile up queued, as behind a long stage. On
    release the turn is handed over as a stage's end hands it over: the longest
    waiting job is made due now.

    :type server: sync_lab.harness.instances.KolibriInstance
    """
    import fcntl

    from kolibri_sync_extras_plugin.writer_turn import LOCK_FILE_NAME
    from kolibri_sync_extras_plugin.writer_turn import hand_the_turn_over

    with open(str(server.home / LOCK_FILE_NAME), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    server.call(hand_the_turn_over)


def enqueue_kolibri_job():
    """
    Inside the server: queue one of Kolibri's own jobs, unrelated to syncing (the
    clean-up of streamed content files).

    :return: The job's id
    :rtype: str
    """
    from kolibri.core.deviceadmin.tasks import streamed_cache_cleanup

    return streamed_cache_cleanup.enqueue()


def wait_for_job(job_id, wait, interval=0.25):
    """
    Inside the server: wait until the job has finished, ``wait`` seconds at most.

    :return: The job's state at the end of the wait
    :rtype: str
    """
    from kolibri.core.tasks.main import job_storage

    deadline = time.monotonic() + wait
    while True:
        state = job_storage.get_orm_job(job_id).state
        if state in ("COMPLETED", "FAILED", "CANCELED") or time.monotonic() > deadline:
            return state
        time.sleep(interval)


def wait_for_unfinished_stage_jobs(count, wait, interval=0.25):
    """
    Inside the server: wait until at least ``count`` stage jobs wait or run.

    :return: The client key (see :mod:`kolibri_sync_extras_plugin.request.identity`)
        of each unfinished stage job
    :rtype: list
    """
    from kolibri_sync_extras_plugin.request.identity import CLIENT_METADATA_KEY
    from kolibri_sync_extras_plugin.request.limits import unfinished_stage_jobs

    deadline = time.monotonic() + wait
    while True:
        jobs = unfinished_stage_jobs()
        if len(jobs) >= count or time.monotonic() > deadline:
            return [(job.extra_metadata or {}).get(CLIENT_METADATA_KEY) for job in jobs]
        time.sleep(interval)


def stage_jobs_of_sessions(wait=0, interval=0.5):
    """
    Inside the server: how many stage jobs belong to closed (or deleted) transfer
    sessions and how many to open ones, after waiting up to ``wait`` seconds for
    the closed sessions' jobs to be cleared.

    :rtype: dict
    """
    from kolibri.core.tasks.main import job_storage

    from kolibri_sync_extras_plugin.stage_status import RUN_STAGE_TASK
    from kolibri_sync_extras_plugin.stage_status import transfer_session_of_job

    deadline = time.monotonic() + wait
    while True:
        jobs = job_storage.filter_jobs(func=RUN_STAGE_TASK)
        of_open = [j for j in jobs if transfer_session_of_job(j) is not None]
        counts = {"closed": len(jobs) - len(of_open), "open": len(of_open)}
        if not counts["closed"] or time.monotonic() > deadline:
            return counts
        time.sleep(interval)
