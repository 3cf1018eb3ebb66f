"""
Facility records to sync, created and counted inside a Kolibri instance.

The functions that touch the database run inside an instance, through
:meth:`sync_lab.harness.instances.KolibriInstance.call`, e.g.
``server.call(generate_activity, records=300)``; they import Kolibri's models when
called, so this module can be imported anywhere.

The data is shaped like a school's: learners in a classroom, each with a handful of
content summary logs and a few content session logs per summary log, all with
made-up content and channel ids. Kolibri's ``generateuserdata`` command needs
content databases and fixtures that a wheel install does not ship.
"""

import random
import re
import uuid
from datetime import timedelta

__all__ = [
    "RECORDS_PER_LEARNER",
    "COUNTED",
    "CREATED_KEY",
    "learners_for",
    "facility_info",
    "generate_activity",
    "count_records",
    "store_records",
]

#: Summary logs per learner, and session logs per summary log.
SUMMARY_LOGS_PER_LEARNER = 4
SESSION_LOGS_PER_SUMMARY_LOG = 2
#: A learner, their membership, their summary logs and those logs' sessions.
RECORDS_PER_LEARNER = 2 + SUMMARY_LOGS_PER_LEARNER * (1 + SESSION_LOGS_PER_SUMMARY_LOG)

#: What :func:`count_records` counts, in the order reports list them.
COUNTED = (
    "users",
    "classrooms",
    "memberships",
    "summary_logs",
    "session_logs",
    "store",
)

#: Which of :func:`generate_activity`'s counts each kind of :data:`COUNTED` grows
#: by (``None``: it counts no classroom).
CREATED_KEY = {
    "users": "users",
    "classrooms": None,
    "memberships": "memberships",
    "summary_logs": "summary_logs",
    "session_logs": "session_logs",
    "store": "total",
}

_CLASSROOM_NAME = "Sync Lab Class"
_CONTENT_KINDS = ("video", "exercise", "document", "html5", "audio")
_USERNAME_PREFIX = re.compile(r"^\w{1,80}$", re.ASCII)
# one password hash for every generated learner: hashing is slow by design
_PASSWORD = "password"


def learners_for(records):
    """
    How many learners :func:`generate_activity` creates for about ``records`` records.

    :rtype: int
    """
    return max(1, int(round(records / float(RECORDS_PER_LEARNER))))


def _facility(facility_id=None):
    from kolibri.core.auth.models import Facility

    if facility_id:
        return Facility.objects.get(id=facility_id)
    facility = Facility.get_default_facility() or Facility.objects.first()
    if facility is None:
        raise LookupError("this instance has no facility: provision it or pull one")
    return facility


def facility_info(facility_id=None):
    """
    :return: The facility's ``id``, ``name`` and ``dataset_id``
    :rtype: dict
    """
    facility = _facility(facility_id)
    return {"id": facility.id, "name": facility.name, "dataset_id": facility.dataset_id}


def _classroom(facility):
    from kolibri.core.auth.models import Classroom

    classroom = Classroom.objects.filter(parent=facility, name=_CLASSROOM_NAME).first()
    if classroom is None:
        classroom = Classroom.objects.create(name=_CLASSROOM_NAME, parent=facility)
    return classroom


def _content_ids(rng, count):
    return [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(count)]


def _add_logs(rng, user, content_ids, channel_id, now):
    """Summary logs for ``user`` on each content id, each with a few sessions."""
    from kolibri.core.logger.models import ContentSessionLog
    from kolibri.core.logger.models import ContentSummaryLog

    for content_id in content_ids:
        kind = rng.choice(_CONTENT_KINDS)
        started = now - timedelta(days=rng.randint(1, 90), minutes=rng.randint(0, 600))
        progress = 0.0
        time_spent = 0.0
        for session in range(SESSION_LOGS_PER_SUMMARY_LOG):
            session_start = started + timedelta(
                days=session, minutes=rng.randint(0, 60)
            )
            session_time = float(rng.randint(30, 900))
            session_progress = round(rng.uniform(0.1, 1.0), 2)
            ContentSessionLog.objects.create(
                user=user,
                content_id=content_id,
                channel_id=channel_id,
                kind=kind,
                start_timestamp=session_start,
                end_timestamp=session_start + timedelta(seconds=session_time),
                time_spent=session_time,
                progress=session_progress,
            )
            time_spent += session_time
            progress = min(1.0, progress + session_progress)
        ContentSummaryLog.objects.create(
            user=user,
            content_id=content_id,
            channel_id=channel_id,
            kind=kind,
            start_timestamp=started,
            end_timestamp=started + timedelta(seconds=time_spent),
            completion_timestamp=(
                started + timedelta(seconds=time_spent) if progress >= 1.0 else None
            ),
            time_spent=time_spent,
            progress=progress,
        )


def generate_activity(
    records, facility_id=None, prefix="learner", seed=None, existing_share=0.0
):
    """
    Create about ``records`` records in the facility: new learners in its lab
    classroom, with their membership and logs, and, for ``existing_share`` of the
    records, new logs for learners the facility already had (as a client device
    adds for learners who used it between syncs).

    :param records: About how many records to create
    :param facility_id: The facility; the default facility if not given
    :param prefix: Start of the new learners' usernames, which must not clash with
        learners created with the same prefix before
    :param seed: Seed for the made-up values; random if not given
    :param existing_share: Between 0 and 1
    :return: How many records of each kind were created
    :rtype: dict
    """
    from django.contrib.auth.hashers import make_password
    from django.db import transaction
    from django.utils import timezone
    from kolibri.core.auth.models import FacilityUser
    from kolibri.core.auth.models import Membership

    if not 0.0 <= existing_share <= 1.0:
        raise ValueError("existing_share must be between 0 and 1")
    if not _USERNAME_PREFIX.match(prefix):
        # Kolibri saves any username, but refuses to deserialize this one on the other side
        raise ValueError(
            "prefix {!r} must be letters, digits and underscores, as Kolibri "
            "usernames are".format(prefix)
        )
    rng = random.Random(seed)
    facility = _facility(facility_id)
    now = timezone.now()
    channel_id = uuid.UUID(int=rng.getrandbits(128)).hex
    logs_per_content = 1 + SESSION_LOGS_PER_SUMMARY_LOG

    existing = list(FacilityUser.objects.filter(facility=facility).order_by("id"))
    existing_records = int(records * existing_share) if existing else 0
    new_learners = (
        learners_for(records - existing_records) if records > existing_records else 0
    )
    created = {"users": 0, "memberships": 0, "summary_logs": 0, "session_logs": 0}

    with transaction.atomic():
        classroom = _classroom(facility)
        password = make_password(_PASSWORD)
        tag = uuid.UUID(int=rng.getrandbits(128)).hex[:6]
        for number in range(new_learners):
            user = FacilityUser(
                username="{}_{}_{}".format(prefix, tag, number),
                full_name="{} {} {}".format(prefix.capitalize(), tag, number),
                facility=facility,
                password=password,
            )
            user.save()
            Membership.objects.create(user=user, collection=classroom)
            _add_logs(
                rng, user, _content_ids(rng, SUMMARY_LOGS_PER_LEARNER), channel_id, now
            )
        created["users"] += new_learners
        created["memberships"] += new_learners
        created["summary_logs"] += new_learners * SUMMARY_LOGS_PER_LEARNER
        created["session_logs"] += (
            new_learners * SUMMARY_LOGS_PER_LEARNER * SESSION_LOGS_PER_SUMMARY_LOG
        )

        # fresh content ids, so each is a new summary log for that learner
        for index in range(existing_records // logs_per_content):
            user = existing[index % len(existing)]
            _add_logs(rng, user, _content_ids(rng, 1), channel_id, now)
            created["summary_logs"] += 1
            created["session_logs"] += SESSION_LOGS_PER_SUMMARY_LOG
    created["total"] = sum(created.values())
    return created


def count_records(facility_id=None):
    """
    Count the facility's records of each kind this lab creates, and the morango
    store rows of its dataset: after a complete sync both sides hold the same.

    :rtype: dict
    """
    from kolibri.core.auth.models import Classroom
    from kolibri.core.auth.models import FacilityUser
    from kolibri.core.auth.models import Membership
    from kolibri.core.logger.models import ContentSessionLog
    from kolibri.core.logger.models import ContentSummaryLog
    from morango.models.core import Store

    facility = _facility(facility_id)
    dataset_id = facility.dataset_id
    return {
        "users": FacilityUser.objects.filter(facility=facility).count(),
        "classrooms": Classroom.objects.filter(parent=facility).count(),
        "memberships": Membership.objects.filter(dataset_id=dataset_id).count(),
        "summary_logs": ContentSummaryLog.objects.filter(dataset_id=dataset_id).count(),
        "session_logs": ContentSessionLog.objects.filter(dataset_id=dataset_id).count(),
        "store": Store.objects.filter(partition__startswith=dataset_id).count(),
    }


def store_records(facility_id=None):
    """
    The morango store rows of the facility's dataset, as comparable values: after a
    complete pull the client holds exactly the server's.

    :return: ``[id, model_name, serialized, deleted, last_saved_instance,
        last_saved_counter]`` lists, sorted by id
    :rtype: list
    """
    from morango.models.core import Store

    dataset_id = _facility(facility_id).dataset_id
    return [
        list(row)
        for row in Store.objects.filter(partition__startswith=dataset_id)
        .order_by("id")
        .values_list(
            "id",
            "model_name",
            "serialized",
            "deleted",
            "last_saved_instance",
            "last_saved_counter",
        )
    ]
