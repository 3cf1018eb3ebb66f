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
