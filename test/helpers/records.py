"""
A push of real records: the facility's own, as the server sends them, edited on a
client and pushed back through morango's buffer API.
"""

import json

from morango.constants import transfer_stages

from .constants import EMPTY_FSIC


def facility_records(client, sync_session):
    """
    The facility's records as the server sends them to a client that has none.

    :type client: test.helpers.morango_client.MorangoHttpClient
    """
    pull = client.create(sync_session, push=False)
    client.proceed_to(pull["id"], transfer_stages.SERIALIZING, client_fsic=EMPTY_FSIC)
    client.proceed_to(pull["id"], transfer_stages.QUEUING)
    records = client.pull_buffers(pull["id"])
    client.close(pull["id"])
    return records


def edited_by_a_client(records, push_id, client_instance):
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


def push_edited(client, sync_session, records, client_instance):
    """
    Push ``records``, edited by ``client_instance``, up to the end of the
    transferring stage.

    :return: The push's transfer session, as the server answered its creation
    :rtype: dict
    """
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
    client.push_buffers(edited_by_a_client(records, push["id"], client_instance))
    return push
