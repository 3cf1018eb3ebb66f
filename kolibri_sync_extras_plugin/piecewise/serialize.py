"""
Serializing in short transactions, so a background stage never holds the
database's write lock for long.

morango serializes (copies the rows the app changed into its store, stamped with
this instance's counter) in one transaction, which on SQLite keeps every request
that writes waiting, as deserializing does (see :mod:`.deserialize`). Here the same work
is committed piece by piece, each piece in a transaction begun as morango begins
its own (on PostgreSQL, it locks the filter's partitions):

- models in morango's order; within a model, the dirty rows under the filter in
  batches sized so that each batch's transaction lasts about
  :data:`~.runner.TARGET_PIECE_SECONDS`. Each batch is morango's per-model step
  (``_serialize_into_store`` in morango |version|) applied to it: existing Store
  records updated (a dirty one keeps its old data as conflicting), new ones
  created, the record max counters set, and the dirty bit cleared for exactly the
  rows of the batch;
- the app's deletions, soft and hard together, in batches the same way;
- each piece that stamps anything takes a counter of its own inside its
  transaction, and publishes it for the filter in the same transaction (see
  :mod:`.stamping`); a run that stamped nothing publishes a fresh counter at the
  end, as morango always does.

So after every piece, as after morango's one transaction, the database max
counters tell the truth: everything this instance saved under the filter up to
them is in the store, and nothing it stamps later is at or below them. A client
that pulls between two pieces gets what the pieces so far serialized, and the
rest with its next pull; a row the app changes while the pieces run is
serialized here if its model is still to come, and otherwise stays dirty for the
next serialization, as a row changed just after morango's transaction would.

**A run stopped between two pieces** has committed whole pieces only, each with
its counter published; the rows it did not reach are still dirty. Run again, it
serializes what is still dirty under new counters. Two runs of the same filter at
once (a job run twice) each read the dirty rows again inside each piece, so a
row is serialized by one of them, never half by each.

Because this follows morango's internals, it runs only where
:func:`~.support.supports_installed_morango` says so; the test suite compares its
result with morango's on the same data.

.. |version| replace:: 0.8.15
"""

import morango
from morango.constants import transfer_stages
from morango.models.core import DeletedModels
from morango.models.core import HardDeletedModels
from morango.registry import syncable_models

from ..errors import UnsupportedMorango
from . import stamping
from . import support
from .runner import PieceRun
from .runner import batches
from .support import SUPPORTED_MORANGO_VERSIONS

__all__ = ["serialize_in_pieces"]


def serialize_in_pieces(profile, sync_filter, on_piece=None, pause=True):
    """
    Serialize the app's dirty rows under ``sync_filter`` into morango's store as
    morango would, one short transaction at a time, each piece under a counter of
    its own (see :mod:`.stamping`).

    After each piece of rows it sends :data:`~.runner.PIECE_COMMITTED` with the
    ``serializing`` stage as sender (the pieces of deletions and counters send 0
    rows).

    :type profile: str
    :param sync_filter: The filter whose partitions to serialize; ``None`` for all,
        as morango allows
    :type sync_filter: morango.models.certificates.Filter|None
    :param on_piece: Called after each piece commits, with the number of rows the
        piece worked on and the seconds its transaction took
    :type on_piece: callable|None
    :param pause: Whether to leave SQLite's write lock free after each piece (see
        :func:`~.runner.pause_after_piece`): in a background job, yes; in a request
        or a client's own sync, which someone waits for, no
    :return: The longest piece's transaction, in seconds
    :rtype: float
    :raises UnsupportedMorango: on a morango version whose serialization this does
        not mirror; there, let morango serialize in its own one transaction
    """
    if not support.supports_installed_morango():
        raise UnsupportedMorango(
            "serializing in pieces mirrors morango {} only, and morango {} is "
            "installed: serialize with morango's own _serialize_into_store".format(
                ", ".join(sorted(SUPPORTED_MORANGO_VERSIONS)),
                morango.__version__,
            )
        )
    run = _Run(profile, sync_filter, on_piece, pause)
    for model in syncable_models.get_models(profile):
        run.model(model)
    run.deletions()
    if not run.published:
        # nothing was stamped: publish a counter all the same, as morango does
        run.commit_stamping_piece(
            lambda counter: counter(), 0, "DatabaseMaxCounter", counted=0
        )
    run.log_end("Serialized")
    return run.longest


class _Run(PieceRun):
    """One serialization of a filter, piece by piece."""

    stage = transfer_stages.SERIALIZING

    def __init__(self, profile, sync_filter, on_piece, pause):
        super().__init__(profile, sync_filter, on_piece, pause)
        #: whether a piece has published a counter for the filter
        self.published = False

    def _stamping(self, work):
        """``work(counter)`` in a piece, then the piece's counter published."""

        def piece():
            counter = stamping.CounterForPiece(self.sync_filter)
            work(counter)
            return counter.publish()

        return piece

    def commit_stamping_piece(self, work, records, what, counted=None):
        if self.commit_piece(self._stamping(work), records, what, counted=counted):
            self.published = True

    def model(self, model):
        dirty = list(
            stamping.changed_rows_of(model, self.sync_filter).values_list(
                "id", flat=True
            )
        )
        self.restart_sizing()
        for batch in batches(dirty, self._piece_size):
            self.commit_stamping_piece(
                lambda counter: self._serialize_batch(model, batch, counter),
                len(batch),
                model.__name__,
            )

    def _serialize_batch(self, model, batch, counter):
        """
        morango's per-model step, on the rows of ``batch`` that are still dirty
        (read again inside the piece's transaction, so a row deleted or serialized
        since the batch was listed is left alone).
        """
        rows = stamping.changed_rows_of(model, self.sync_filter).filter(id__in=batch)
        stamping.serialize_rows(model, rows, counter)

    def deletions(self):
        """
        Apply the deletions logged for the profile, soft and hard, in batches: each
        batch marks its store records and clears its log rows.
        """
        logged = list(
            DeletedModels.objects.filter(profile=self.profile).values_list(
                "id", flat=True
            )
        )
        logged_soft = set(logged)
        logged.extend(
            id_
            for id_ in HardDeletedModels.objects.filter(
                profile=self.profile
            ).values_list("id", flat=True)
            if id_ not in logged_soft
        )
        self.restart_sizing()
        for batch in batches(logged, self._piece_size):
            self.commit_stamping_piece(
                lambda counter: stamping.apply_deletions(self.profile, batch, counter),
                len(batch),
                "deletion",
                counted=0,
            )
