"""
What a background stage reports while it runs: Kolibri job progress, and a line of
text that Kolibri's task list and tasks API show.

What each stage lets us count:

- ``deserializing``: the dirty Store records under the sync filter are known when
  the stage starts, and morango saves each Store record back as it deserializes
  it, so records are counted one by one (before Kolibri 0.19, morango marks them
  clean in bulk: 0 of them until all are done; see :mod:`kolibri_sync_extras_plugin.compat`). In a
  background job on Kolibri 0.19 the plugin commits them in pieces (see
  :mod:`kolibri_sync_extras_plugin.piecewise.deserialize`), and progress is saved after each piece.
- ``dequeuing``: the records the client pushed (the transfer session's Buffer rows)
  are known when the stage starts, but morango merges them in one SQL transaction,
  so progress is 0 of them until all are done.
- ``queuing``: how many records were queued is known only once the stage is done
  (``records_total``), so progress is one step.
- ``serializing`` for a pull: the rows changed under the sync filter are known when
  the stage starts; on Kolibri 0.19 the plugin serializes them in pieces (see
  :mod:`kolibri_sync_extras_plugin.piecewise.serialize`) and progress is saved after each piece. Elsewhere, and
  for a push (the server serializes nothing), progress is one step.
- ``cleanup``: morango exposes no count, so progress is one step.

Progress is never saved while the stage holds a transaction on the main database:
on SQLite, job storage is a file of its own, and a job that waited for job
storage's lock while holding the main database's could wait on a request doing the
opposite. What is counted inside a transaction is saved once it commits (after
the piece, or when the stage ends).

Progress never goes backwards within a run of a job; a job that runs again starts
from 0.
"""

import contextlib
import logging
import threading

from django.db import connection
from django.db.models.signals import post_save
from django.utils import timezone
from kolibri.core.tasks.job import State
from kolibri.core.tasks.utils import get_current_job
from morango.constants import transfer_stages
from morango.models.core import Store

from ..compat import COUNTS_DESERIALIZED_RECORDS
from ..compat import update_job_progress
from ..piecewise import support
from ..piecewise.runner import PIECE_COMMITTED
from ..stage_records import buffered_records
from ..stage_records import changed_rows_to_serialize
from ..stage_records import records_to_deserialize
from .task_list import describe

logger = logging.getLogger(__name__)

__all__ = ["RECORDS", "STAGE", "StageProgress"]

#: Progress counts records.
RECORDS = "records"
#: Progress counts the stage as one step.
STAGE = "stage"


def _serializes_in_pieces(context):
    """Whether the stage's serializing commits in pieces."""
    return context.is_producer and support.supports_installed_morango()


def _queued_records(context):
    """
    :return: How many records morango queued for the client, known once queuing is done
    :rtype: int|None
    """
    context.transfer_session.refresh_from_db(fields=["records_total"])
    return context.transfer_session.records_total


#: Per stage: the count known when the stage starts, the count known when it ends,
#: and whether records are counted while it runs (or a function of the context
#: that tells).
_COUNTS = {
    transfer_stages.SERIALIZING: (
        changed_rows_to_serialize,
        None,
        _serializes_in_pieces,
    ),
    transfer_stages.DESERIALIZING: (
        records_to_deserialize,
        None,
        COUNTS_DESERIALIZED_RECORDS,
    ),
    transfer_stages.DEQUEUING: (buffered_records, None, False),
    transfer_stages.QUEUING: (None, _queued_records, False),
}


def transaction_depth():
    """
    :return: How many atomic blocks are open on the main database's connection
        in this thread (0 outside any transaction)
    :rtype: int
    """
    if not connection.in_atomic_block:
        return 0
    return 1 + len(connection.savepoint_ids)


class _DeserializedRecordCounter:
    """
    Counts the Store records morango saves back as it deserializes them on this
    thread: each one deserialized (its dirty bit cleared) or failed (its error
    recorded). Other threads' syncs save Store records too, and are ignored.

    When the first record counted comes round again, morango is deserializing
    afresh (its transaction was rolled back and the stage retried): the count
    starts over, so it never includes records that were rolled back.
    """

    def __init__(self, on_count):
        self._thread = threading.get_ident()
        self._on_count = on_count
        self._active = True
        self._first = None
        self.count = 0

    def __call__(self, sender, instance=None, update_fields=None, **kwargs):
        if not self._active or threading.get_ident() != self._thread:
            return
        if not update_fields or not (
            "dirty_bit" in update_fields or "deserialization_error" in update_fields
        ):
            return
        if self._first is None:
            self._first = instance.pk
        elif instance.pk == self._first:
            self.count = 0
        self.count += 1
        self._on_count(self.count)

    def connect(self):
        # held weakly, and inert once stopped: morango's mute_signals swaps receiver
        # lists wholesale, so a receiver may outlive its disconnect for a moment
        post_save.connect(self, sender=Store, dispatch_uid=self._uid())

    def disconnect(self):
        self._active = False
        post_save.disconnect(sender=Store, dispatch_uid=self._uid())

    def _uid(self):
        return "kolibri_sync_extras_progress_{}".format(id(self))


class StageProgress:
    """
    Reports one background stage's progress through the Kolibri job running it.

    Outside a Kolibri job it still counts records, for the log, but reports nothing.
    """

    def __init__(self, stage, job=None):
        """
        :param stage: A ``transfer_stages`` constant
        :param job: The Kolibri job running the stage; defaults to the current job
        :type job: kolibri.core.tasks.job.Job|None
        """
        self.stage = stage
        self.job = job if job is not None else get_current_job()
        #: The number of records the stage works on, where morango lets us count them
        self.records = None
        self.done = 0
        self.total = 1
        self.counted_live = False
        # records morango saved back (counted inside its transactions)
        self._counted = 0
        # records of the pieces that committed (see :mod:`kolibri_sync_extras_plugin.piecewise.deserialize`)
        self._committed = 0
        self._started = None
        # transactions open when the stage started are not the stage's own
        self._depth = transaction_depth()
        self._metadata = self.job.extra_metadata if self.job is not None else {}

    def start(self, context):
        """
        Count what can be counted before the stage runs, and report 0.

        :type context: morango.sync.context.LocalSessionContext
        :return: The number of records the stage will work on, if known now
        :rtype: int|None
        """
        self._started = timezone.now()
        self._depth = transaction_depth()
        count_before, _, live = _COUNTS.get(self.stage, (None, None, False))
        if callable(live):
            live = live(context)
        if count_before is not None:
            self.records = count_before(context)
        # with no records to count, the stage is one step
        unit = RECORDS if self.records else STAGE
        self.counted_live = live and unit == RECORDS
        self.total = self.records if unit == RECORDS else 1
        self._metadata.update(
            progress_unit=unit,
            counted_live=self.counted_live,
            records=self.records,
            started_at=self._started.isoformat(),
            finished_at=None,
            error=None,
            not_run=None,
        )
        # a job run again starts from 0, so this is saved even if progress went down
        self.done = 0
        self._report()
        self._save_metadata()
        return self.records

    @contextlib.contextmanager
    def counting(self):
        """
        Run the stage inside this, so records are counted as morango works on them,
        on the stages where it lets us.
        """
        if not self.counted_live:
            yield
            return
        counter = _DeserializedRecordCounter(self._count_saved)
        counter.connect()
        thread = threading.get_ident()

        def piece_committed(sender, records=0, **kwargs):
            # a piece inside a transaction the stage opened has not really committed,
            # and the pieces of another stage's work (deserializing serializes
            # first) are not this stage's records
            if (
                sender != self.stage
                or threading.get_ident() != thread
                or self._in_stage_transaction()
            ):
                return
            self._committed += records
            self.advance(self._committed)

        PIECE_COMMITTED.connect(piece_committed, weak=False)
        try:
            yield
        finally:
            PIECE_COMMITTED.disconnect(piece_committed)
            counter.disconnect()

    def _count_saved(self, counted):
        """
        :param counted: How many records morango has saved back so far in this pass,
            inside its transaction: the record count at the end of a stage that
            commits once, never saved as progress while the transaction is open
        :type counted: int
        """
        self._counted = min(counted, self.total)

    def advance(self, counted):
        """
        :param counted: How many records are done and committed
        :type counted: int
        """
        counted = min(counted, self.total)
        if counted > self.done:
            self.done = counted
            self._report()

    def finish(self, context):
        """
        Report the stage done, with the record count known at its end.

        :type context: morango.sync.context.LocalSessionContext
        :return: The number of records the stage worked on, where morango lets us count
        :rtype: int|None
        """
        _, count_after, _ = _COUNTS.get(self.stage, (None, None, False))
        if count_after is not None:
            self.records = count_after(context)
        elif self.counted_live:
            self.records = self._committed or self._counted
        self._metadata["records"] = self.records
        self.done = self.total
        self._report()
        self._save_metadata(finished_at=timezone.now().isoformat())
        return self.records

    def fail(self, error):
        """
        Note why the stage failed, for the task list; the job itself fails once the
        exception leaves the task.

        :param error: What went wrong, as people should read it
        :type error: str
        """
        self._save_metadata(
            error=str(error),
            finished_at=timezone.now().isoformat(),
        )

    def not_run(self, reason):
        """
        Note why the job left the stage alone, for the task list.

        :type reason: str
        """
        self._save_metadata(not_run=reason, finished_at=timezone.now().isoformat())

    @property
    def duration(self):
        """
        :return: Seconds since :meth:`start`
        :rtype: float
        """
        if self._started is None:
            return 0.0
        return (timezone.now() - self._started).total_seconds()

    def _status_text(self):
        state = State.FAILED if self._metadata.get("error") else State.RUNNING
        return describe(self._metadata, state, self.done, self.total)

    def _in_stage_transaction(self):
        return transaction_depth() > self._depth

    def _report(self):
        if self.job is None:
            return
        if self._in_stage_transaction():
            # see the module's docstring; the next report after the commit saves it
            return
        self._metadata["status_text"] = self._status_text()
        # Kolibri saves this only when it moved by 1% or more, or is complete
        self._write(
            update_job_progress, self.job, self.done, self.total, self._metadata
        )

    def _save_metadata(self, **metadata):
        self._metadata.update(metadata)
        if self.job is None:
            return
        self._metadata["status_text"] = self._status_text()
        self._write(self.job.save_meta)

    def _write(self, save, *args, **kwargs):
        # progress is for people watching: a job storage that cannot take it (busy,
        # or gone) must not fail the stage
        try:
            save(*args, **kwargs)
        except Exception:
            logger.warning(
                "Could not save the progress of job %s", self.job.job_id, exc_info=True
            )
