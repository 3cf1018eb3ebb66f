"""
How long serializing and deserializing hold the database's write lock: morango's
one transaction against the plugin's pieces, on the same store of a real Kolibri
instance.

``python -m sync_lab.pieces_bench --sizes 1500,6000`` provisions one instance per
size with about that many records of learner activity, then:

- marks every row of the facility changed (as local changes waiting for a pull
  leave them) and serializes them twice: with morango's own function, then, after
  marking the same rows again, with :mod:`.serialize_pieces`;
- marks every record of the facility in morango's store as received and not yet
  deserialized (as a push of that many records leaves it), and deserializes it
  twice: with morango's own functions, then, after marking the same records again,
  with :mod:`.pieces`, each after serializing as morango does before it
  deserializes (by morango, then in pieces).

It prints, for each, morango's one transaction and the pieces' longest, median,
count and total.
"""

import argparse
import sys
import time

from ..harness.instances import KolibriInstance
from ..harness.scenario import provision_server

__all__ = ["measure_deserializing", "main"]


def _mark_received(dataset_id):
    from morango.models.core import Store

    # the facility's own rows stay as they are: a push carries learner activity
    return (
        Store.objects.filter(partition__startswith=dataset_id)
        .exclude(model_name__in=("facility", "facilitydataset"))
        .update(dirty_bit=True)
    )


def _mark_changed(dataset_id):
    from morango.registry import syncable_models

    changed = 0
    for model in syncable_models.get_models("facilitydata"):
        rows = model.syncing_objects.filter(_morango_partition__startswith=dataset_id)
        changed += rows.count()
        rows.update(update_dirty_bit_to=True)
    return changed


def _piece_figures(prefix, piece_seconds, total):
    return {
        prefix + "pieces": len(piece_seconds),
        prefix + "pieces_longest_s": max(piece_seconds),
        prefix + "pieces_median_s": sorted(piece_seconds)[len(piece_seconds) // 2],
        prefix + "pieces_total_s": total,
    }


def measure_serializing(dataset_id, profile, sync_filter):
    """
    Run inside the instance, with the facility's rows already in the store.

    :return: Seconds and counts, by name
    :rtype: dict
    """
    from morango.sync.operations import _serialize_into_store

    from kolibri_sync_extras_plugin.piecewise.serialize import serialize_in_pieces

    figures = {"serialize_rows": _mark_changed(dataset_id)}
    started = time.monotonic()
    _serialize_into_store(profile, filter=sync_filter)
    figures["serialize_morango_s"] = time.monotonic() - started

    _mark_changed(dataset_id)
    piece_seconds = []
    started = time.monotonic()
    serialize_in_pieces(
        profile, sync_filter, on_piece=lambda rows, s: piece_seconds.append(s)
    )
    figures.update(
        _piece_figures("serialize_", piece_seconds, time.monotonic() - started)
    )
    return figures


def measure_deserializing(facility_id):
    """
    Run inside the instance (see :meth:`KolibriInstance.call`).

    :return: Seconds and counts, by name
    :rtype: dict
    """
    import logging

    from kolibri.core.auth.models import Facility
    from morango.models.certificates import Filter
    from morango.sync.controller import MorangoProfileController
    from morango.sync.operations import _deserialize_from_store
    from morango.sync.operations import _serialize_into_store

    from kolibri_sync_extras_plugin.piecewise import deserialize
    from kolibri_sync_extras_plugin.piecewise.serialize import serialize_in_pieces

    logging.getLogger("morango").setLevel(logging.ERROR)
    pieces_log = []

    class _Pieces(logging.Handler):
        def emit(self, record):
            if record.args and isinstance(record.args[1], str):
                pieces_log.append(record.args)

    logger = logging.getLogger("kolibri_sync_extras_plugin.piecewise.runner")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_Pieces())
    profile = "facilitydata"
    dataset_id = Facility.objects.get(id=facility_id).dataset_id
    sync_filter = Filter(dataset_id)
    MorangoProfileController(profile).serialize_into_store()
    figures = measure_serializing(dataset_id, profile, sync_filter)

    figures["records"] = _mark_received(dataset_id)
    started = time.monotonic()
    _serialize_into_store(profile, filter=sync_filter)
    figures["morango_serialize_s"] = time.monotonic() - started
    started = time.monotonic()
    _deserialize_from_store(profile, filter=sync_filter)
    figures["morango_deserialize_s"] = time.monotonic() - started

    _mark_received(dataset_id)
    piece_seconds = []
    started = time.monotonic()
    figures["pieces_serialize_longest_s"] = serialize_in_pieces(profile, sync_filter)
    figures["pieces_serialize_s"] = time.monotonic() - started
    started = time.monotonic()
    deserialize.deserialize_in_pieces(
        profile, sync_filter, on_piece=lambda records, s: piece_seconds.append(s)
    )
    figures.update(_piece_figures("", piece_seconds, time.monotonic() - started))
    figures["pieces_longest"] = sorted(pieces_log, key=lambda p: -p[2])[:3]
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default="1500,6000")
    args = parser.parse_args(argv)
    for size in (int(s) for s in args.sizes.split(",")):
        with KolibriInstance("server", plugin=True) as server:
            facility = provision_server(server, records=size)
            figures = server.call(
                "sync_lab.bench.pieces_bench:measure_deserializing",
                timeout=3600,
                facility_id=facility["id"],
            )
        print("size {}:".format(size))
        for name, value in figures.items():
            print(
                "  {:24} {}".format(
                    name, round(value, 3) if isinstance(value, float) else value
                )
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
