"""
A client that completes a sync again after an interrupted one leaves no transfer
session of the interrupted sync open on the server.
"""

import datetime
import uuid

import pytest
from django.utils import timezone
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import Buffer
from morango.models.core import SyncSession
from morango.models.core import TransferSession

from kolibri_sync_extras_plugin.recovery.superseded import SUPERSEDED_IDLE_SECONDS
from kolibri_sync_extras_plugin.request.enqueue import enqueue_stage_job
from kolibri_sync_extras_plugin.stage_status import job_id_for

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def _abandoned_pull(client, sync_session):
    """A pull the client gave up on with the records queued for it."""
    transfer = client.create(sync_session, push=False)
    client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    client.proceed_to(transfer["id"], transfer_stages.QUEUING)
    return TransferSession.objects.get(id=transfer["id"])


def _completed_pull(client, sync_session):
    transfer = client.create(sync_session, push=False)
    client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    _transfer_and_close(client, transfer["id"])
    completed = TransferSession.objects.get(id=transfer["id"])
    assert not completed.active, "the pull did not complete"
    return completed


def _transfer_and_close(client, transfer_session_id):
    """The rest of a pull: every queued record received, then the cleanup."""
    queued = client.proceed_to(transfer_session_id, transfer_stages.QUEUING)
    client.proceed_to(
        transfer_session_id,
        transfer_stages.TRANSFERRING,
        records_transferred=queued["records_total"],
    )
    client.close(transfer_session_id)


def _left_alone_for(transfer_session, seconds):
    TransferSession.objects.filter(id=transfer_session.id).update(
        last_activity_timestamp=timezone.now() - datetime.timedelta(seconds=seconds)
    )


def _active(transfer_session):
    return TransferSession.objects.get(id=transfer_session.id).active


@pytest.fixture
def another_sync_session(server_sync_session):
    """The same client's next sync session, as a retry after a failed sync opens."""
    server_sync_session.pk = uuid.uuid4().hex
    server_sync_session.last_activity_timestamp = timezone.now()
    server_sync_session.save(force_insert=True)
    return SyncSession.objects.get(pk=server_sync_session.pk)


@pytest.fixture
def abandoned_pull(async_client, server_sync_session):
    abandoned = _abandoned_pull(async_client, server_sync_session)
    assert Buffer.objects.filter(transfer_session=abandoned).exists()
    _left_alone_for(abandoned, SUPERSEDED_IDLE_SECONDS + 1)
    return abandoned


def test_same_client_completes_the_pull_again__abandoned_pull_closed(
    abandoned_pull, async_client, another_sync_session
):
    _completed_pull(async_client, another_sync_session)

    assert not _active(abandoned_pull)


def test_same_client_completes_the_pull_again__abandoned_buffers_deleted(
    abandoned_pull, async_client, another_sync_session
):
    _completed_pull(async_client, another_sync_session)

    assert not Buffer.objects.filter(transfer_session=abandoned_pull).exists()


def test_same_client_completes_a_push__abandoned_pull_left_open(
    abandoned_pull, async_client, another_sync_session
):
    transfer = async_client.create(another_sync_session, push=True, records_total=0)
    for stage in (
        transfer_stages.SERIALIZING,
        transfer_stages.QUEUING,
        transfer_stages.TRANSFERRING,
        transfer_stages.DEQUEUING,
        transfer_stages.DESERIALIZING,
    ):
        async_client.proceed_to(transfer["id"], stage)
    async_client.close(transfer["id"])
    assert not TransferSession.objects.get(id=transfer["id"]).active

    assert _active(abandoned_pull)


def test_another_client_completes_the_pull__abandoned_pull_left_open(
    abandoned_pull, async_client, another_sync_session
):
    another_sync_session.client_instance_id = uuid.uuid4()
    another_sync_session.save()

    _completed_pull(async_client, another_sync_session)

    assert _active(abandoned_pull)


def test_pull_active_since_the_new_one_began__left_open(
    abandoned_pull, async_client, another_sync_session
):
    transfer = async_client.create(another_sync_session, push=False)
    # the older pull is still being worked on: a request after the new one began
    TransferSession.objects.filter(id=abandoned_pull.id).update(
        last_activity_timestamp=timezone.now()
    )
    async_client.proceed_to(
        transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
    )
    _transfer_and_close(async_client, transfer["id"])
    assert not TransferSession.objects.get(id=transfer["id"]).active

    assert _active(abandoned_pull)


def test_pull_idle_only_briefly__left_open(
    abandoned_pull, async_client, another_sync_session
):
    # a second sync of the same device running at once: its pull was busy a
    # moment before this one began
    _left_alone_for(abandoned_pull, 30)

    _completed_pull(async_client, another_sync_session)

    assert _active(abandoned_pull)


def test_client_without_instance_id__abandoned_pull_of_another_such_client_left_open(
    abandoned_pull, async_client, another_sync_session
):
    # two clients that send no instance id cannot be told apart
    SyncSession.objects.filter(
        id__in=[abandoned_pull.sync_session_id, another_sync_session.id]
    ).update(client_instance_id=None)

    _completed_pull(async_client, another_sync_session)

    assert _active(abandoned_pull)


def test_pull_with_a_stage_job_still_queued__left_open(
    abandoned_pull, async_client, another_sync_session
):
    # the older pull's current stage waits for its job: a worker will work on it
    enqueue_stage_job(
        dict(
            job_id=job_id_for(abandoned_pull.id, abandoned_pull.transfer_stage),
            facility_id=None,
            extra_metadata={},
            kwargs=dict(
                transfer_session_id=abandoned_pull.id,
                stage=abandoned_pull.transfer_stage,
                request_data={},
                capabilities=[],
            ),
        )
    )

    _completed_pull(async_client, another_sync_session)

    assert _active(abandoned_pull)


def test_pull_idle_only_briefly_but_errored__closed(
    abandoned_pull, async_client, another_sync_session
):
    # the client stopped at the errored stage, and morango never moves on from it
    _left_alone_for(abandoned_pull, 30)
    TransferSession.objects.filter(id=abandoned_pull.id).update(
        transfer_stage_status=transfer_statuses.ERRORED
    )

    _completed_pull(async_client, another_sync_session)

    assert not _active(abandoned_pull)
