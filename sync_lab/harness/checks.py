"""
What must hold on each side once an interrupted sync has been retried: the same
records, none twice, nothing left half-received, no transfer left open; and, record
by record, the same data on every device once syncing has stopped
(:func:`data_digest`, :func:`compare_digests`).

:func:`sync_state` runs inside an instance, through
:meth:`~sync_lab.harness.instances.KolibriInstance.call`, and answers everything in one
call, since each call starts Kolibri anew.
"""

import datetime
import json
import uuid
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from .dataset import CREATED_KEY
from .dataset import count_records
from .jobs import stage_jobs

__all__ = [
    "DEVICE_LOCAL_FIELDS",
    "Differences",
    "data_digest",
    "compare_digests",
    "sync_state",
    "sync_states",
    "duplicate_rows",
    "expected_server_counts",
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


#: Fields of a serialized record that may differ between two devices holding the
#: same data. morango's ``serialize()`` already leaves out what it keeps per device
#: (``_morango_dirty_bit``, and each model's ``morango_fields_not_to_serialize``,
#: which no Kolibri 0.19 model sets); every other field travels in the store record
#: and is applied as is on the other side (``_morango_source_id`` and
#: ``_morango_partition`` too), so none is left out here.
DEVICE_LOCAL_FIELDS = frozenset()
#: How many dirty ids per model a digest lists (it counts them all).
_DIRTY_IDS_LISTED = 20


def _comparable(field, value):
    """
    One serialized value, as the same on any device and database: a JSON field's
    text parsed (its keys' order is the writer's), a datetime (a plain Django
    ``DateTimeField`` such as ``last_login``) in UTC, a UUID as its hex.
    Kolibri's own ``DateTimeTzField`` serializes to one string (the UTC time and
    the zone's name) on SQLite and PostgreSQL alike, and stays as it is.
    """
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, str) and getattr(field, "morango_serialize_to_string", False):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def data_digest(facility_id=None):
    """
    Inside an instance: every app row of the facility's dataset, record by record,
    for each syncable model of morango's ``facilitydata`` profile (the rows whose
    partition starts with the dataset id, read through each model's
    ``syncing_objects``, as morango's serialization reads them), each as its
    ``serialize()`` less :data:`DEVICE_LOCAL_FIELDS`.

    :return: ``records`` (``{model_name: {id: fields}}``), ``dirty`` (``{model_name:
        [ids]}``, up to 20 per model, of rows changed since morango last
        serialized them) and ``dirty_count``
    :rtype: dict
    """
    from morango.registry import syncable_models

    from .dataset import _facility

    dataset_id = _facility(facility_id).dataset_id
    records = {}
    dirty = {}
    dirty_count = 0
    for model in syncable_models.get_models("facilitydata"):
        fields = {f.attname: f for f in model._meta.concrete_fields}
        # morango before 0.8 has no syncing_objects: its default manager is that
        manager = getattr(model, "syncing_objects", model.objects)
        rows = manager.filter(_morango_partition__startswith=dataset_id).order_by("id")
        held = {}
        for row in rows.iterator():
            held[row.id] = {
                name: _comparable(fields.get(name), value)
                for name, value in row.serialize().items()
                if name not in DEVICE_LOCAL_FIELDS
            }
            if row._morango_dirty_bit:
                dirty_count += 1
                ids = dirty.setdefault(model.morango_model_name, [])
                if len(ids) < _DIRTY_IDS_LISTED:
                    ids.append(row.id)
        if held:
            records[model.morango_model_name] = held
    return {"records": records, "dirty": dirty, "dirty_count": dirty_count}


#: What :func:`compare_digests` finds: how many records differ, and a few of them.
Differences = namedtuple("Differences", ("count", "listed"))


def _short(value, width=60):
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def compare_digests(expected, actual, names=("server", "client"), limit=10):
    """
    The records two :func:`data_digest` answers do not agree on: held on one side
    only, or with a field that differs.

    :param expected: A digest (or its ``records``), e.g. the server's
    :param actual: Another, e.g. a client's
    :param names: What to call the two sides in the lines
    :param limit: How many differing records to describe at most
    :return: How many records differ, and a line for each of the first ``limit``
    :rtype: Differences
    """
    expected = expected.get("records", expected)
    actual = actual.get("records", actual)
    count = 0
    listed = []
    for model in sorted(set(expected) | set(actual)):
        ours = expected.get(model, {})
        theirs = actual.get(model, {})
        for record_id in sorted(set(ours) | set(theirs)):
            if ours.get(record_id) == theirs.get(record_id):
                continue
            count += 1
            if len(listed) >= limit:
                continue
            if record_id not in theirs:
                what = "only on the {}".format(names[0])
            elif record_id not in ours:
                what = "only on the {}".format(names[1])
            else:
                a, b = ours[record_id], theirs[record_id]
                what = "; ".join(
                    "{} {} {} {} {}".format(
                        field,
                        names[0],
                        _short(a.get(field, "(none)")),
                        names[1],
                        _short(b.get(field, "(none)")),
                    )
                    for field in sorted(set(a) | set(b))
                    if a.get(field, "(none)") != b.get(field, "(none)")
                )
            listed.append("{} {}: {}".format(model, record_id, what))
    return Differences(count, listed)


def sync_state(facility_id=None, jobs=False, digest=False):
    """
    Everything the lab checks on one side after a sync, in one call.

    :param jobs: Include the plugin's stage jobs (a server's)
    :param digest: Include the :func:`data_digest`
    :return: ``counts`` (see :func:`~sync_lab.harness.dataset.count_records`),
        ``duplicates``, ``open_transfer_sessions``, ``undeserialized`` and, if
        asked, ``jobs`` (see :func:`~sync_lab.harness.jobs.stage_jobs`) and
        ``digest``
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
    if digest:
        state["digest"] = data_digest(facility_id=facility_id)
    return state


def expected_server_counts(kind, client_states, created):
    """
    What a server must hold of ``kind`` once each of its clients has pulled,
    created records of its own and pushed them, as each client sees it: the
    client's own count (the server's records and its own) plus what every other
    client created.

    :param kind: One of :data:`~sync_lab.harness.dataset.COUNTED`
    :param client_states: Each client's :func:`sync_state`, in order
    :param created: What :func:`~sync_lab.harness.dataset.generate_activity`
        created on each client, in the same order
    :return: One count per client: each must be the server's
    :rtype: list
    """
    key = CREATED_KEY[kind]
    made = [(count[key] if key else 0) for count in created]
    return [
        state["counts"][kind] + sum(made) - made[number]
        for number, state in enumerate(client_states)
    ]


def sync_states(server, clients, facility_id, digest=False):
    """
    :func:`sync_state` of a server (with its stage jobs) and of its clients, all
    asked at once: each answer starts Kolibri, which is most of its cost.

    :type server: sync_lab.harness.instances.KolibriInstance
    :param clients: :class:`~sync_lab.harness.instances.KolibriInstance` objects
    :param digest: Include every side's :func:`data_digest`
    :return: The server's state, and a list of the clients' states in order
    :rtype: tuple
    """
    clients = list(clients)
    with ThreadPoolExecutor(max_workers=1 + len(clients)) as pool:
        server_state = pool.submit(
            server.call,
            sync_state,
            facility_id=facility_id,
            jobs=True,
            digest=digest,
        )
        client_states = [
            pool.submit(client.call, sync_state, facility_id=facility_id, digest=digest)
            for client in clients
        ]
        return server_state.result(), [state.result() for state in client_states]
