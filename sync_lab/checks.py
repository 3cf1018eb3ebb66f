"""
What must hold on each side once an interrupted sync has been retried: the same
records, none twice, nothing left half-received, no transfer left open.

:func:`sync_state` runs inside an instance, through
:meth:`~sync_lab.instances.KolibriInstance.call`, and answers everything in one
call, since each call starts Kolibri anew.
"""

from concurrent.futures import ThreadPoolExecutor

from .dataset import count_records
from .jobs import stage_jobs

__all__ = [
    "sync_state",
    "sync_states",
    "duplicate_rows",
    "open_transfer_sessions",
    "undeserialized_records",
]


def duplicate_rows(facility_id=None):
    """
    Rows that say the same thing twice, per kind: a learner's username, a
    membership, a learner's summary log of one content item, a session log of one
    content item started at the same moment. A record applied twice under a new id
    would show here; the counts alone could hide it behind a missing one.

    :return: ``{kind: number of duplicated keys}``
    :rtype: dict
    """
    from django.db.models import Count
    from kolibri.core.auth.models import Facility
    from kolibri.core.auth.models import FacilityUser
    from kolibri.core.auth.models import Membership
    from kolibri.core.logger.models import ContentSessionLog
    from kolibri.core.logger.models import ContentSummaryLog

    if facility_id:
        facility = Facility.objects.get(id=facility_id)
    else:
        facility = Facility.get_default_facility()
    keys = {
        "users": (
            FacilityUser.objects.filter(facility=facility),
            ("username",),
        ),
        "memberships": (
            Membership.objects.filter(dataset_id=facility.dataset_id),
            ("user_id", "collection_id"),
        ),
        "summary_logs": (
            ContentSummaryLog.objects.filter(dataset_id=facility.dataset_id),
            ("user_id", "content_id"),
        ),
        "session_logs": (
            ContentSessionLog.objects.filter(dataset_id=facility.dataset_id),
            ("user_id", "content_id", "start_timestamp"),
        ),
    }
    return {
        kind: queryset.values(*fields)
        .annotate(rows=Count("id"))
        .filter(rows__gt=1)
        .count()
        for kind, (queryset, fields) in keys.items()
    }


def open_transfer_sessions():
    """
    The transfer sessions this instance still holds open, each as its id, direction,
    stage and status: after every sync has ended, there should be none.

    :rtype: list
    """
    from morango.models.core import TransferSession

    return [
        {
            "id": session["id"],
            "direction": "push" if session["push"] else "pull",
            "stage": session["transfer_stage"],
            "status": session["transfer_stage_status"],
        }
        for session in TransferSession.objects.filter(active=True).values(
            "id", "push", "transfer_stage", "transfer_stage_status"
        )
    ]


def undeserialized_records(facility_id=None):
    """
    Store records of the facility received but not yet applied to Kolibri's tables
    (dirty, and not given up on with a deserialization error).

    A deletion counts only while its row is still there: morango 0.8 deletes the
    row but leaves the record's dirty bit set (outside models that refer to
    themselves), so a device that received deletions keeps them dirty for good.

    :rtype: int
    """
    from django.db.models import Q
    from kolibri.core.auth.models import Facility
    from morango.models.core import Store
    from morango.registry import syncable_models

    if facility_id:
        facility = Facility.objects.get(id=facility_id)
    else:
        facility = Facility.get_default_facility()
    no_error = Q(deserialization_error__isnull=True) | Q(deserialization_error="")
    dirty = Store.objects.filter(
        no_error, partition__startswith=facility.dataset_id, dirty_bit=True
    )
    deletions = {}
    for profile, model_name, record_id in dirty.filter(deleted=True).values_list(
        "profile", "model_name", "id"
    ):
        deletions.setdefault((profile, model_name), []).append(record_id)
    rows_left = 0
    for (profile, model_name), ids in deletions.items():
        model = syncable_models.get_model(profile, model_name)
        manager = getattr(model, "syncing_objects", model.objects)
        rows_left += manager.filter(id__in=ids).count()
    return dirty.filter(deleted=False).count() + rows_left


def sync_state(facility_id=None, jobs=False):
    """
    Everything the lab checks on one side after a sync, in one call.

    :param jobs: Include the plugin's stage jobs (a server's)
    :return: ``counts`` (see :func:`~sync_lab.dataset.count_records`),
        ``duplicates``, ``open_transfer_sessions``, ``undeserialized`` and,
        if asked, ``jobs`` (see :func:`~sync_lab.jobs.stage_jobs`)
    :rtype: dict
    """
    state = {
        "counts": count_records(facility_id=facility_id),
        "duplicates": duplicate_rows(facility_id=facility_id),
        "open_transfer_sessions": open_transfer_sessions(),
        "undeserialized": undeserialized_records(facility_id=facility_id),
    }
    if jobs:
        state["jobs"] = stage_jobs()
    return state


def sync_states(server, clients, facility_id):
    """
    :func:`sync_state` of a server (with its stage jobs) and of its clients, all
    asked at once: each answer starts Kolibri, which is most of its cost.

    :type server: sync_lab.instances.KolibriInstance
    :param clients: :class:`~sync_lab.instances.KolibriInstance` objects
    :return: The server's state, and a list of the clients' states in order
    :rtype: tuple
    """
    clients = list(clients)
    with ThreadPoolExecutor(max_workers=1 + len(clients)) as pool:
        server_state = pool.submit(
            server.call, sync_state, facility_id=facility_id, jobs=True
        )
        client_states = [
            pool.submit(client.call, sync_state, facility_id=facility_id)
            for client in clients
        ]
        return server_state.result(), [state.result() for state in client_states]
