"""Watching a run in pieces commit them."""

import pytest

from kolibri_sync_extras_plugin.piecewise.runner import PieceRun
from kolibri_sync_extras_plugin.piecewise.support import supports_installed_morango

#: For a module's ``pytestmark``: the pieces run only where they mirror morango.
only_where_pieces_mirror_morango = pytest.mark.skipif(
    not supports_installed_morango(),
    reason="the pieces follow morango 0.8.15 (Kolibri 0.19); with older morango "
    "every stage is morango's own, in one transaction",
)


def count_committed_pieces(monkeypatch, run_class):
    """
    :param run_class: A :class:`PieceRun` subclass, whose pieces to count
    :return: A list that gets the records of each piece committed from now on
    :rtype: list
    """
    committed = []

    def counting(run, work, records, what, **kwargs):
        result = PieceRun.commit_piece(run, work, records, what, **kwargs)
        committed.append(records)
        return result

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


def without_own_counters(snapshot):
    """
    A snapshot (with ``store`` rows, :func:`counter_rows` and ``instance_counter``)
    with every counter of this instance left out: a run in pieces takes a counter
    per piece where morango takes one, and must otherwise leave the same data.
    """
    from morango.models.core import InstanceIDModel

    instance = InstanceIDModel.get_or_create_current_instance()[0].id
    store = [
        dict(r, last_saved_counter=None) if r["last_saved_instance"] == instance else r
        for r in snapshot["store"]
    ]
    return dict(
        snapshot,
        store=store,
        record_max_counters=[
            dict(r, counter=None) if r["instance_id"] == instance else r
            for r in snapshot["record_max_counters"]
        ],
        database_max_counters=[
            dict(r, counter=None) if r["instance_id"] == instance else r
            for r in snapshot["database_max_counters"]
        ],
        instance_counter=None,
    )
