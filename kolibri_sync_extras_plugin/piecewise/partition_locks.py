"""
morango's partition locks on PostgreSQL, held at session level around a piece or
a stage run in the request, so a repeatable-read snapshot never starts before the
wait for another stage of the same data has ended.
"""

import binascii
import contextlib

from django.db import connection

__all__ = ["partitions_held_if_free", "partitions_locked_for_piece"]


def partitions_locked_for_piece(sync_filter):
    """
    On PostgreSQL, hold the filter's partition locks (morango's advisory locks) for
    the whole piece, taken before its transaction begins. morango takes them as
    the first statement of its repeatable-read transaction, whose snapshot is then
    taken before the wait: the transaction wakes up with a view older than the
    stage it waited for, and conflicts with what that stage wrote. Taken first,
    the piece's snapshot starts once the lock is its own, and morango's own lock
    inside the transaction is granted at once (a session holds its locks again).
    Elsewhere, nothing to do.
    """
    return _session_partition_locks(sync_filter, wait=True)


def partitions_held_if_free(sync_filter):
    """
    On PostgreSQL, take the filter's partition locks (as
    :func:`partitions_locked_for_piece` does) only if no one holds them, and hold
    them until the block ends. Yields whether they are held: a stage run in the
    request that would wait behind another stage of the same facility (a job's
    pieces, other clients' stages) goes to a job instead, so its request stays
    short. Elsewhere (SQLite's lock is the whole database's, and its wait is
    bounded by its timeout), yields ``True`` at once.
    """
    return _session_partition_locks(sync_filter, wait=False)


@contextlib.contextmanager
def _session_partition_locks(sync_filter, wait):
    """
    morango's partition locks for ``sync_filter``, at session level, released
    when the block ends; with ``wait`` false, only those free at once. Yields
    whether all are held (always, where there are none to take).
    """
    from morango.sync.operations import DBBackend

    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield True
        return
    keys = _partition_lock_keys(sync_filter)
    taken = []
    try:
        for key1, key2, shared in keys:
            if wait:
                DBBackend._execute_lock(key1, key2=key2, session=True, shared=shared)
            elif not _try_advisory_lock(key1, key2, shared):
                break
            taken.append((key1, key2, shared))
        yield len(taken) == len(keys)
    finally:
        for key1, key2, shared in reversed(taken):
            DBBackend._execute_lock(
                key1, key2=key2, session=True, shared=shared, unlock=True
            )


def _try_advisory_lock(key1, key2, shared):
    """A session-level advisory lock, if free at once: whether it was taken."""
    keys = [key1] if key2 is None else [key1, key2]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_lock{}({})".format(
                "_shared" if shared else "", ", ".join(["%s"] * len(keys))
            ),
            keys,
        )
        return bool(cursor.fetchone()[0])


def _partition_lock_keys(sync_filter):
    """
    The advisory locks morango's ``lock_partitions`` takes for ``sync_filter``, as
    ``(key1, key2, shared)``: everything exclusively without a filter, or all
    partitions shared and each dataset's partition exclusively.
    """
    from morango.sync.backends.postgres import LOCK_ALL_PARTITIONS
    from morango.sync.backends.postgres import LOCK_PARTITION
    from morango.sync.backends.postgres import SIGNED_MAX_INTEGER

    if sync_filter is None:
        return [(LOCK_ALL_PARTITIONS, None, False)]
    keys = [(LOCK_ALL_PARTITIONS, None, True)]
    for partition in sorted(set(prefix[:32] for prefix in sync_filter)):
        partition_int = binascii.crc32(partition.encode("utf-8")) - SIGNED_MAX_INTEGER
        keys.append((LOCK_PARTITION, partition_int, False))
    return keys
