"""
Saves of morango's session rows keep what another writer put there: a full save
of a transfer session, as morango's PATCH handler makes, keeps what a
background stage wrote to the row after the handler read it; two writers of a
sync session's ``extra_fields`` (Kolibri's marks of what it handled) both keep
their marks; a PATCH that sets no field but the stage saves nothing, so it puts
back nothing another writer wrote.
"""

import json

import pytest
from morango.api.viewsets import TransferSessionViewSet
from morango.constants import transfer_stages
from morango.constants import transfer_statuses
from morango.models.core import SyncSession
from morango.models.core import TransferSession

from ..helpers.constants import ALL_DATABASES
from ..helpers.constants import EMPTY_FSIC
from ..helpers.jobs import run_stage_jobs
from ..helpers.options import sync_options

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def pull_waiting_on_its_job(async_client, server_sync_session):
    """A pull whose serializing stage is STARTED and its job queued, not run."""
    with sync_options(
        BACKGROUND_INITIALIZATION=True,
        BACKGROUND_FINALIZATION=True,
        INLINE_STAGE_RECORDS=0,
    ):
        transfer = async_client.create(server_sync_session, push=False)
        response = async_client.proceed_to(
            transfer["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC
        )
        assert response["transfer_stage_status"] == transfer_statuses.STARTED
        yield transfer


def test_full_save__of_a_row_read_before_a_job_wrote__keeps_the_jobs_fields(
    pull_waiting_on_its_job,
):
    read_before = TransferSession.objects.get(id=pull_waiting_on_its_job["id"])
    [job] = run_stage_jobs()
    assert job.state == "COMPLETED"
    written = TransferSession.objects.get(id=read_before.id)
    assert written.server_fsic and written.server_fsic != read_before.server_fsic

    # the stale copy saves a field of its own, as the PATCH handler does
    read_before.bytes_sent = 123
    read_before.save()

    after = TransferSession.objects.get(id=read_before.id)
    assert after.bytes_sent == 123
    assert after.server_fsic == written.server_fsic
    assert after.transfer_stage_status == transfer_statuses.COMPLETED


def test_full_save__a_field_the_saver_changed__is_its_own(pull_waiting_on_its_job):
    read_before = TransferSession.objects.get(id=pull_waiting_on_its_job["id"])
    run_stage_jobs()

    read_before.records_total = 42
    read_before.save()

    assert TransferSession.objects.get(id=read_before.id).records_total == 42


def _another_writer_after_the_patch_reads(monkeypatch, write):
    """
    ``write()`` runs after the second read of morango's PATCH handler (the model
    update's), before its save.
    """
    real_get_object = TransferSessionViewSet.get_object
    reads = []

    def another_writer_after_the_second_read(viewset):
        transfer_session = real_get_object(viewset)
        reads.append(transfer_session.id)
        if len(reads) == 2:
            write(transfer_session.id)
        return transfer_session

    monkeypatch.setattr(
        TransferSessionViewSet, "get_object", another_writer_after_the_second_read
    )
    return reads


def test_retried_patch__while_the_job_finishes__leaves_the_stage_as_the_job_ended_it(
    pull_waiting_on_its_job, async_client, monkeypatch
):
    # a client retries its PATCH after a connection error; the job finishes on
    # another worker between the handler reading the row and saving it whole
    def job_finishes(transfer_session_id):
        [job] = run_stage_jobs()
        assert job.state == "COMPLETED"

    reads = _another_writer_after_the_patch_reads(monkeypatch, job_finishes)

    async_client.ask_for_stage(
        pull_waiting_on_its_job["id"],
        transfer_stages.SERIALIZING,
        client_fsic=EMPTY_FSIC,
    )

    assert len(reads) == 2
    transfer_session = TransferSession.objects.get(id=pull_waiting_on_its_job["id"])
    assert transfer_session.transfer_stage_status == transfer_statuses.COMPLETED
    server_fsic = json.loads(transfer_session.server_fsic)
    assert server_fsic and server_fsic != json.loads(EMPTY_FSIC)


def _bytes_received_set_to_999(transfer_session_id):
    TransferSession.objects.filter(id=transfer_session_id).update(bytes_received=999)


def test_patch_naming_the_stage_alone__saves_nothing__another_writer_s_change_stays(
    async_client, server_sync_session, monkeypatch
):
    transfer = async_client.create(server_sync_session, push=True, records_total=0)
    reads = _another_writer_after_the_patch_reads(
        monkeypatch, _bytes_received_set_to_999
    )

    answer = async_client.proceed_to(transfer["id"], transfer_stages.TRANSFERRING)

    assert len(reads) == 2
    # a save of the row as the handler read it would have put back 0
    assert TransferSession.objects.get(id=transfer["id"]).bytes_received == 999
    # the client is answered with the row as it stands
    assert answer["bytes_received"] == 999


def test_patch_with_a_field__saves_it(async_client, server_sync_session):
    transfer = async_client.create(server_sync_session, push=True, records_total=0)

    async_client.proceed_to(
        transfer["id"], transfer_stages.TRANSFERRING, records_transferred=0
    )
    async_client.ask_for_stage(
        transfer["id"], transfer_stages.TRANSFERRING, records_total=7
    )

    assert TransferSession.objects.get(id=transfer["id"]).records_total == 7


def _kolibri_marks_handled(sync_session, operation, mark):
    """
    What Kolibri's ``KolibriSyncOperationMixin.mark_handled`` writes, from the
    storage as this copy of the row read it.
    """
    storage = json.loads(sync_session.extra_fields or "{}")
    storage.setdefault(operation, []).append(mark)
    sync_session.extra_fields = json.dumps(storage)
    sync_session.save(update_fields=["extra_fields"])


def test_extra_fields__two_writers_from_the_same_read__both_marks_kept(
    server_sync_session,
):
    # a push's cleanup job and the next transfer's request read the storage at
    # the same moment, then each writes its own mark
    job_copy = SyncSession.objects.get(id=server_sync_session.id)
    request_copy = SyncSession.objects.get(id=server_sync_session.id)

    _kolibri_marks_handled(job_copy, "CleanupHook", "t1:cleanup")
    _kolibri_marks_handled(request_copy, "CleanupHook", "t2:initializing")
    _kolibri_marks_handled(request_copy, "OtherHook", "t2:initializing")

    storage = json.loads(
        SyncSession.objects.get(id=server_sync_session.id).extra_fields
    )
    assert storage == {
        "CleanupHook": ["t1:cleanup", "t2:initializing"],
        "OtherHook": ["t2:initializing"],
    }
