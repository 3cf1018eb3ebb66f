"""Watching a run in pieces commit them."""

from kolibri_sync_extras_plugin.pieces import PieceRun


def count_committed_pieces(monkeypatch, run_class):
    """
    :param run_class: A :class:`PieceRun` subclass, whose pieces to count
    :return: A list that gets the records of each piece committed from now on
    :rtype: list
    """
    committed = []

    def counting(run, work, records, what, **kwargs):
        PieceRun.commit_piece(run, work, records, what, **kwargs)
        committed.append(records)

    monkeypatch.setattr(run_class, "commit_piece", counting)
    return committed


def counter_rows():
    """
    morango's record and database max counters, in a stable order: what a
    serialization or deserialization in pieces must leave as morango's own does.

    :rtype: dict
    """
    from morango.models.core import DatabaseMaxCounter
    from morango.models.core import RecordMaxCounter

    return {
        "record_max_counters": list(
            RecordMaxCounter.objects.order_by("store_model_id", "instance_id").values(
                "store_model_id", "instance_id", "counter"
            )
        ),
        "database_max_counters": list(
            DatabaseMaxCounter.objects.order_by("instance_id", "partition").values(
                "instance_id", "partition", "counter"
            )
        ),
    }
