"""
What counts as another writer getting in the way of a stage or a piece: the
transaction was rolled back, so running it again is safe.
"""

import contextlib

from django.db import IntegrityError
from django.db import OperationalError
from morango.constants import transfer_statuses

__all__ = [
    "is_isolation_conflict",
    "is_transient_database_error",
    "pending_on_isolation_conflict",
]


def is_isolation_conflict(error):
    """
    Whether ``error`` is the one morango's own operations answer PENDING to: a
    transaction isolation conflict (PostgreSQL could not serialize concurrent
    transactions, or SQLite's lock stayed busy).
    """
    from morango.sync.operations import DBBackend

    return isinstance(error, OperationalError) and bool(
        DBBackend._is_transaction_isolation_error(error)
    )


class _Outcome:
    """Set by :func:`pending_on_isolation_conflict` when it answered PENDING."""

    status = None


@contextlib.contextmanager
def pending_on_isolation_conflict():
    """
    Answer PENDING, as morango's operations do, when the block meets a transaction
    isolation conflict: the stage's controller invokes it again. Any other error
    goes on. Yields an object whose ``status`` is PENDING afterwards if so::

        with pending_on_isolation_conflict() as outcome:
            do_the_work()
        if outcome.status:
            return outcome.status
    """
    outcome = _Outcome()
    try:
        yield outcome
    except OperationalError as e:
        if not is_isolation_conflict(e):
            raise
        outcome.status = transfer_statuses.PENDING


def is_transient_database_error(error):
    """
    Whether ``error`` only says that another writer got in the way: SQLite's single
    write lock was busy, PostgreSQL could not serialize concurrent transactions, or
    a concurrent transaction on PostgreSQL inserted the same row first (see
    :func:`_is_concurrent_insert`). The stage's transaction was rolled back, so
    running the stage again is safe.

    :type error: BaseException
    :rtype: bool
    """
    if isinstance(error, IntegrityError):
        return _is_concurrent_insert(error)
    if not isinstance(error, OperationalError):
        return False
    return is_isolation_conflict(error) or "database is locked" in str(error)


def _is_concurrent_insert(error):
    """
    Whether an ``IntegrityError`` is PostgreSQL's unique violation. morango
    serializes in a repeatable-read transaction whose snapshot is taken before it
    waits for the partition lock, so when two clients pull at once the second
    serializer inserts store records the first has just committed. Run again, the
    stage sees them. SQLite takes its write lock before reading, so there a unique
    violation is a real one.

    :type error: django.db.IntegrityError
    :rtype: bool
    """
    try:
        from psycopg2.errors import UniqueViolation
    except ImportError:
        return False
    return any(
        isinstance(e, UniqueViolation)
        for e in (error, getattr(error, "__cause__", None))
    )
