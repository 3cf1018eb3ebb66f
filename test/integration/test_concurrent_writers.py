"""
Serializing and deserializing in pieces keep morango's guarantees while other
writers run between the pieces.

morango serializes and deserializes a filter in one transaction, so nothing else
happens in the middle of it. The plugin commits the same work piece by piece, and
between two pieces anything may happen on a busy server: a user edits, creates or
deletes rows, another stage serializes an overlapping filter (a stage in the
request, another job, the server's own sync upstream), and clients pull. The
properties morango's one transaction gives, and that must survive the pieces:

1. **Counters only move forward.** Every record this instance stamps carries a
   counter above every counter it already published (its database max counters)
   for a partition that holds the record, and no database max counter goes down.
   A client that pulled records up to a counter never asks for them again, so a
   record stamped at or below it is never sent to that client.
   (:mod:`kolibri_sync_extras_plugin.stamping`)
2. **Local changes win.** A local edit or deletion made at any moment while a push
   is deserialized ends as it would if it had been made just before or just after
   morango's one-transaction stage: either way, the edit is what the app holds.
3. **Every client ends with the server's data.** After quiescence, a client that
   pulls once more holds exactly the server's store for its filter.
4. **A push merged meanwhile keeps morango's order.** Another device's push
   merged between two pieces (a new learner with the learner's log, in one
   transaction as dequeuing merges it) ends applied with no deserialization
   error on any record: what the run applies of it, it applies after the
   records it depends on, as morango's one transaction does, and the rest waits
   for that push's own stage. (:mod:`kolibri_sync_extras_plugin.piecewise.deserialize`)
5. **At least once is safe.** The same stage run twice at once (a job run again
   while its first run still commits pieces) ends as one run would, and so does
   a stage run in the request that stops at its time budget after some pieces
   and is then run again as a whole in a job.

A seeded scheduler picks, after each committed piece, what else happens before
the next one (the same stage run again meanwhile among it), and the piece sizes;
the oracle checks (1) after every step, (4) when the stage ends, and the rest at
the end. Against the
plugin before each piece took its own counter and merged local changes, about one
schedule in four failed: records stamped at or below a published counter (one in
ten, some of them never reaching a client) and local edits overwritten by the
push. ``SYNC_EXTRAS_SCHEDULES`` sets how many schedules run
(``SYNC_EXTRAS_SCHEDULE_SEED`` replays one); a failure names its seed.
"""

import contextlib
import json
import os
import random
import uuid

import pytest
from django.db import transaction
from django.utils import timezone
from kolibri.core.auth.models import Classroom
from kolibri.core.auth.models import FacilityUser
from kolibri.core.auth.models import LearnerGroup
from kolibri.core.lessons.models import Lesson
from kolibri.core.logger.models import ContentSummaryLog
from morango.models.certificates import Filter
from morango.models.core import DatabaseMaxCounter
from morango.models.core import InstanceIDModel
from morango.models.core import RecordMaxCounter
from morango.models.core import Store
from morango.sync.operations import _deserialize_from_store
from morango.sync.operations import _serialize_into_store

from kolibri_sync_extras_plugin.errors import RequestBudgetSpent
from kolibri_sync_extras_plugin.piecewise import deserialize
from kolibri_sync_extras_plugin.piecewise import runner as piece_runner
from kolibri_sync_extras_plugin.piecewise import saving
from kolibri_sync_extras_plugin.piecewise import serialize

from ..helpers.constants import ALL_DATABASES
from ..helpers.pieces import only_where_pieces_mirror_morango

pytestmark = [
    pytest.mark.django_db(databases=ALL_DATABASES),
    only_where_pieces_mirror_morango,
]

PROFILE = "facilitydata"
SCHEDULES = int(os.environ.get("SYNC_EXTRAS_SCHEDULES", "200"))
REPLAY_SEED = os.environ.get("SYNC_EXTRAS_SCHEDULE_SEED")
MAX_FAILURES_REPORTED = int(os.environ.get("SYNC_EXTRAS_SCHEDULE_FAILURES", "3"))
DELETED = "deleted"


class _Client:
    """
    A device that pulls from the server as morango does: it sends the counters it
    holds for the filter, receives every store record saved by an instance above
    the counter it holds for that instance, and then holds the server's counters.
    """

    def __init__(self, name, sync_filter):
        self.name = name
        self.filter = sync_filter
        self.counters = {}
        self.records = {}

    def pull(self):
        server_counters = (
            DatabaseMaxCounter.calculate_filter_specific_instance_counters(
                self.filter, is_producer=True
            )
        )
        for instance, counter in server_counters.items():
            held = self.counters.get(instance, 0)
            if counter <= held:
                continue
            for record in _store_under(self.filter).filter(
                last_saved_instance=instance, last_saved_counter__gt=held
            ):
                self.records[record.id] = _held(record)
        for instance, counter in server_counters.items():
            self.counters[instance] = max(counter, self.counters.get(instance, 0))

    def differences(self):
        """The server's records this client does not hold as the server does."""
        server = {record.id: _held(record) for record in _store_under(self.filter)}
        return sorted(
            record_id
            for record_id in set(server) | set(self.records)
            if server.get(record_id) != self.records.get(record_id)
        )


def _store_under(sync_filter):
    condition = None
    for prefix in sync_filter:
        q = Store.objects.filter(partition__startswith=prefix)
        condition = q if condition is None else condition | q
    return condition


def _held(record):
    return (json.loads(record.serialized), record.deleted, record.hard_deleted)


class _Oracle:
    """Property 1, checked after every step of a schedule."""

    def __init__(self):
        self.instance_id = InstanceIDModel.get_or_create_current_instance()[0].id
        self.published = self._published()
        self.stamps = self._stamps()
        #: where property 1 was broken, in the order found
        self.violations = []

    def _published(self):
        return dict(
            DatabaseMaxCounter.objects.filter(instance_id=self.instance_id).values_list(
                "partition", "counter"
            )
        )

    def _stamps(self):
        return {
            id_: (partition, counter)
            for id_, partition, counter in Store.objects.filter(
                last_saved_instance=self.instance_id
            ).values_list("id", "partition", "last_saved_counter")
        }

    def check(self, step):
        published = self._published()
        for partition, counter in self.published.items():
            if published.get(partition, 0) < counter:
                self.violations.append(
                    "after {}: the database max counter of partition {} went down "
                    "from {} to {}".format(
                        step, partition, counter, published.get(partition)
                    )
                )
        stamps = self._stamps()
        for id_, (partition, counter) in stamps.items():
            if self.stamps.get(id_) == (partition, counter):
                continue
            covering = [
                before
                for prefix, before in self.published.items()
                if partition.startswith(prefix)
            ]
            if covering and counter <= max(covering):
                self.violations.append(
                    "after {}: record {} was stamped with counter {}, at or below "
                    "counter {} already published for its partition".format(
                        step, id_, counter, max(covering)
                    )
                )
        self.published = published
        self.stamps = stamps


class _Schedule:
    """
    One seeded schedule: the facility's data, a push received from a device, two
    clients pulling (the whole facility, and one learner's partition), one run of
    the plugin's piecewise work, and after each of its pieces a random choice of
    what else happens.
    """

    def __init__(self, seed, facility):
        self.seed = seed
        self.rng = random.Random(seed)
        self.facility = facility
        self.filter = Filter(facility.dataset_id)
        self.steps = []
        self.nested = False
        self.expected = {}
        #: another device's pushes merged between pieces (each restarts a run)
        self.merges_left = 3
        self.merged = []

    # the data -----------------------------------------------------------------

    def prepare(self):
        rng = self.rng
        learners = list(FacilityUser.objects.filter(facility=self.facility))
        classroom = Classroom.objects.filter(parent=self.facility).first()
        for number in range(4):
            Lesson.objects.create(
                title="Lesson {}".format(number),
                collection=classroom,
                created_by=learners[0],
            )
        for number, learner in enumerate(learners[:8]):
            ContentSummaryLog.objects.create(
                user=learner,
                content_id=uuid.uuid4().hex,
                channel_id=uuid.uuid4().hex,
                kind="exercise",
                progress=0.1,
                start_timestamp=timezone.now(),
            )
        _serialize_into_store(PROFILE, filter=self.filter)
        learner = rng.choice(learners)
        self.clients = [
            _Client("facility", self.filter),
            _Client(
                "one learner",
                Filter("{}:user-ro:{}".format(self.facility.dataset_id, learner.id)),
            ),
        ]
        for client in self.clients:
            client.pull()
        for row in self._tracked_rows():
            self.expected[(type(row), row.id)] = self._value(row)
        self._receive_push()
        self.oracle = _Oracle()
        # what users changed since the last sync, for the stage to serialize
        self.steps.append("users' changes before the stage")
        for _ in range(self.rng.randint(4, 16)):
            self.rng.choice((self.edit, self.edit, self.create, self.delete))()

    def _tracked_rows(self):
        return (
            list(FacilityUser.objects.filter(facility=self.facility))
            + list(Lesson.objects.all())
            + list(ContentSummaryLog.objects.all())
            + list(LearnerGroup.objects.all())
        )

    @staticmethod
    def _value(row):
        if isinstance(row, FacilityUser):
            return row.full_name
        if isinstance(row, Lesson):
            return row.title
        if isinstance(row, ContentSummaryLog):
            return row.progress
        return row.name

    @staticmethod
    def _field(model):
        return {
            FacilityUser: "full_name",
            Lesson: "title",
            ContentSummaryLog: "progress",
            LearnerGroup: "name",
        }[model]

    def _receive_push(self):
        """
        Records another device pushed, merged into the store and waiting to be
        deserialized, as dequeuing leaves them: newer versions of some rows.
        """
        device = uuid.uuid4().hex
        rows = self._tracked_rows()
        for counter, row in enumerate(self.rng.sample(rows, k=len(rows) // 2), start=1):
            store = Store.objects.get(id=row.id)
            data = json.loads(store.serialized)
            field = self._field(type(row))
            value = (
                0.5 + counter / 1000.0
                if field == "progress"
                else "Pushed {}".format(counter)
            )
            data[field] = value
            store.serialized = json.dumps(data)
            store.dirty_bit = True
            store.last_saved_instance = device
            store.last_saved_counter = counter
            store.last_transfer_session_id = uuid.uuid4().hex
            store.save()
            RecordMaxCounter.objects.create(
                store_model_id=row.id, instance_id=device, counter=counter
            )
            self.expected[(type(row), row.id)] = value
        # and dequeuing records that the server now holds the device's records
        DatabaseMaxCounter.objects.create(
            instance_id=device, partition=self.facility.dataset_id, counter=counter
        )

    # what happens between pieces ---------------------------------------------

    def between_pieces(self, sender, **kwargs):
        self.step("a {} piece".format(sender))
        if self.nested:
            return
        for _ in range(self.rng.choice((0, 0, 1, 1, 2, 3))):
            action = self.rng.choice(
                (
                    self.edit,
                    self.edit,
                    self.edit,
                    self.create,
                    self.delete,
                    self.pull,
                    self.pull,
                    self.serialize_in_one_transaction,
                    self.serialize_in_pieces_meanwhile,
                    self.deserialize_in_pieces_meanwhile,
                    self.merge_another_push,
                )
            )
            action()

    def step(self, what):
        self.steps.append(what)
        self.oracle.check(what)

    def edit(self):
        rows = self._tracked_rows()
        row = self.rng.choice(rows)
        field = self._field(type(row))
        value = (
            self.rng.random()
            if field == "progress"
            else "Local {}".format(len(self.steps))
        )
        setattr(row, field, value)
        row.save()
        self.expected[(type(row), row.id)] = value
        self.step("a local edit of {} {}".format(type(row).__name__, row.id))

    def create(self):
        learner = self.rng.choice(
            list(FacilityUser.objects.filter(facility=self.facility))
        )
        log = ContentSummaryLog.objects.create(
            user=learner,
            content_id=uuid.uuid4().hex,
            channel_id=uuid.uuid4().hex,
            kind="exercise",
            progress=self.rng.random(),
            start_timestamp=timezone.now(),
        )
        self.expected[(ContentSummaryLog, log.id)] = log.progress
        self.step("a new log {}".format(log.id))

    def delete(self):
        rows = list(Lesson.objects.all()) + list(ContentSummaryLog.objects.all())
        if not rows:
            return
        row = self.rng.choice(rows)
        model, id_ = type(row), row.id
        # Kolibri's lessons are only ever deleted softly
        hard = isinstance(row, ContentSummaryLog) and self.rng.random() < 0.4
        if hard:
            row.delete(hard_delete=True)
        else:
            row.delete()
        self.expected[(model, id_)] = DELETED
        self.step(
            "a {} deletion of {} {}".format(
                "hard" if hard else "soft", model.__name__, id_
            )
        )

    def merge_another_push(self):
        """
        Another device's push dequeued meanwhile: a new learner and the learner's
        log, merged into the store in one transaction, waiting to be deserialized.
        """
        if not self.merges_left:
            return
        self.merges_left -= 1
        device = uuid.uuid4().hex
        held = Store.objects.filter(deleted=False, hard_deleted=False)
        template_user = held.filter(model_name="facilityuser").first()
        template_log = held.filter(model_name="contentsummarylog").first()
        user_id, log_id = uuid.uuid4().hex, uuid.uuid4().hex
        name = "Merged {}".format(len(self.steps))
        progress = self.rng.random()
        with transaction.atomic():
            for counter, (template, id_, changes) in enumerate(
                (
                    (
                        template_user,
                        user_id,
                        {"username": "m" + user_id[:20], "full_name": name},
                    ),
                    (template_log, log_id, {"user_id": user_id, "progress": progress}),
                ),
                start=1,
            ):
                data = dict(json.loads(template.serialized), id=id_, **changes)
                owner = json.loads(template.serialized).get("user_id") or template.id
                Store.objects.create(
                    id=id_,
                    serialized=json.dumps(data),
                    model_name=template.model_name,
                    profile=template.profile,
                    partition=template.partition.replace(owner, user_id),
                    source_id=uuid.uuid4().hex,
                    last_saved_instance=device,
                    last_saved_counter=counter,
                    last_transfer_session_id=uuid.uuid4().hex,
                    dirty_bit=True,
                )
                RecordMaxCounter.objects.create(
                    store_model_id=id_, instance_id=device, counter=counter
                )
            DatabaseMaxCounter.objects.create(
                instance_id=device, partition=self.facility.dataset_id, counter=2
            )
        self.merged.extend((user_id, log_id))
        self.expected[(FacilityUser, user_id)] = name
        self.expected[(ContentSummaryLog, log_id)] = progress
        self.step("another device's push merged: learner {}".format(user_id))

    def failed_records(self):
        """The records of pushes merged meanwhile that the stage marked as failed."""
        failed = Store.objects.filter(id__in=self.merged).exclude(
            deserialization_error__isnull=True
        )
        return [
            "{} {} failed to deserialize: {}".format(
                record.model_name, record.id, record.deserialization_error
            )
            for record in failed.exclude(deserialization_error="")
        ]

    def pull(self):
        client = self.rng.choice(self.clients)
        client.pull()
        self.step("a pull of {}".format(client.name))

    def _some_filter(self):
        return self.rng.choice([self.filter] + [c.filter for c in self.clients])

    def serialize_in_one_transaction(self):
        """A stage in the request, or the server's own sync upstream."""
        sync_filter = self._some_filter()
        _serialize_into_store(PROFILE, filter=sync_filter)
        self.step("morango serializing {}".format(list(sync_filter)))

    def serialize_in_pieces_meanwhile(self):
        """Another stage job, of an overlapping filter."""
        sync_filter = self._some_filter()
        self.nested = True
        try:
            serialize.serialize_in_pieces(PROFILE, sync_filter)
        finally:
            self.nested = False
        self.step("another job serializing {}".format(list(sync_filter)))

    def deserialize_in_pieces_meanwhile(self):
        """
        The same push's stage run a second time at once: a job run twice, or
        requeued while its first run still commits pieces.
        """
        self.nested = True
        try:
            serialize.serialize_in_pieces(PROFILE, self.filter)
            deserialize.deserialize_in_pieces(PROFILE, self.filter)
        finally:
            self.nested = False
        self.step("the same stage run again meanwhile")

    # the run and its end -------------------------------------------------------

    def run(self):
        subject = self.rng.choice(("pull", "push"))
        # in one schedule of three, the stage first runs in the request, which
        # stops it at its budget after a few pieces; then a job runs it as a whole
        budget = self.rng.choice((None, None, self.rng.randint(1, 6)))
        if budget is not None:
            self.steps.append(
                "the plugin's {} stage in the request, for {} pieces".format(
                    subject, budget
                )
            )
            try:
                with self._request_budget_of(budget):
                    self._stage(subject)
            except RequestBudgetSpent:
                self.steps.append("the request's budget spent; on to a job")
        self.steps.append("the plugin's {} stage in pieces".format(subject))
        self._stage(subject)

    def _stage(self, subject):
        serialize.serialize_in_pieces(PROFILE, self.filter)
        if subject == "push":
            deserialize.deserialize_in_pieces(PROFILE, self.filter)

    @contextlib.contextmanager
    def _request_budget_of(self, pieces):
        """The request's budget, spent once the stage's own ``pieces`` have committed."""
        committed = []

        def spent_after_pieces(records, what):
            if self.nested:
                return
            committed.append(records)
            if len(committed) >= pieces:
                raise RequestBudgetSpent("{} pieces committed".format(pieces))

        original = piece_runner._check_request_budget
        piece_runner._check_request_budget = spent_after_pieces
        try:
            yield
        finally:
            piece_runner._check_request_budget = original

    def quiesce(self):
        """Nothing else writes: the next sync serializes and deserializes all."""
        _serialize_into_store(PROFILE, filter=self.filter)
        _deserialize_from_store(PROFILE, filter=self.filter)
        self.step("the next sync's serializing")
        for client in self.clients:
            client.pull()

    def failures(self, failed_records=()):
        failures = list(self.oracle.violations[:3]) + list(failed_records[:3])
        for client in self.clients:
            missing = client.differences()
            if missing:
                failures.append(
                    "client '{}' does not hold as the server does: {}".format(
                        client.name, ", ".join(missing[:5])
                    )
                )
        for (model, id_), value in sorted(
            self.expected.items(), key=lambda item: item[0][1]
        ):
            row = model.objects.filter(id=id_).first()
            held = DELETED if row is None else self._value(row)
            if held != value:
                failures.append(
                    "{} {} holds {!r}, where the last change made was {!r}".format(
                        model.__name__, id_, held, value
                    )
                )
        return failures


@contextlib.contextmanager
def _seeded_pieces(monkeypatch, rng):
    """Small pieces of random sizes, and no pause between them."""
    monkeypatch.setattr(piece_runner, "FIRST_PIECE_RECORDS", 2)
    monkeypatch.setattr(
        piece_runner, "next_piece_size", lambda records, seconds: rng.randint(1, 4)
    )
    monkeypatch.setattr(piece_runner, "pause_after_piece", lambda seconds: None)
    yield


def _run_schedule(seed, facility, monkeypatch):
    """One schedule, undone again afterwards; the schedule and what it broke."""
    schedule = _Schedule(seed, facility)
    sid = transaction.savepoint()
    try:
        with _seeded_pieces(monkeypatch, schedule.rng):
            schedule.prepare()
            piece_runner.PIECE_COMMITTED.connect(schedule.between_pieces, weak=False)
            try:
                schedule.run()
                failed_records = schedule.failed_records()
                schedule.quiesce()
            finally:
                piece_runner.PIECE_COMMITTED.disconnect(schedule.between_pieces)
            return schedule, schedule.failures(failed_records)
    finally:
        transaction.savepoint_rollback(sid)


def _seeds():
    if REPLAY_SEED is not None:
        return [int(REPLAY_SEED)]
    return list(range(SCHEDULES))


def test_concurrent_writers__every_schedule__keeps_morangos_guarantees(
    facility, monkeypatch
):
    # the merged pushes' new rows go through the pieces' direct inserts, which
    # the schedules must exercise among the other writers
    direct_inserts = []
    insert = saving._inserted

    def counted_insert(app_model):
        inserted = insert(app_model)
        direct_inserts.append(inserted)
        return inserted

    monkeypatch.setattr(saving, "_inserted", counted_insert)
    found = []
    for seed in _seeds():
        schedule, failures = _run_schedule(seed, facility, monkeypatch)
        if failures:
            found.append((seed, schedule, failures))
            if len(found) >= MAX_FAILURES_REPORTED:
                break
    assert not found, "\n\n".join(
        "seed {} (replay with SYNC_EXTRAS_SCHEDULE_SEED={}), after {} steps:\n  {}"
        "\n  last steps: {}".format(
            seed,
            seed,
            len(schedule.steps),
            "\n  ".join(failures[:4]),
            "; ".join(schedule.steps[-6:]),
        )
        for seed, schedule, failures in found
    )
    if REPLAY_SEED is None:
        assert any(direct_inserts)
