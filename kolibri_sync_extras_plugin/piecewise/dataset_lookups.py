"""
Each piece of a deserializing looks up a related row's facility dataset once, not
once per record.

Before Kolibri saves a log, a membership or a role it checks the row's dataset
against the dataset of the user (or collection) it belongs to: one query per
record, unless Kolibri's per-thread ``dataset_cache`` is on. Kolibri's own sync
command turns that cache on for the whole of a sync, so a device deserializing a
pull looks each user up once; nothing turns it on for the stages a server runs,
so stock Kolibri's server makes a query for every record a client pushes. In a
push of learner activity those lookups are about a third of the deserializing.

A piece turns the cache on for its own transaction only, and starts it empty:

- within one transaction the answer cannot change (on SQLite the piece is the
  only writer; on PostgreSQL it reads one snapshot, in morango's isolated
  transaction), so every record is checked against the dataset the query would
  have returned;
- a user deleted between two pieces is not remembered from the earlier one, so a
  record of theirs fails as it would without the cache;
- a piece tried again after meeting another writer starts with an empty cache.
"""

import contextlib

__all__ = ["datasets_remembered"]


@contextlib.contextmanager
def datasets_remembered():
    """
    Kolibri's dataset cache on and empty for the block (or the decorated piece),
    then off and empty again, as Kolibri's own ``with dataset_cache`` leaves it.
    """
    from kolibri.core.auth.models import dataset_cache

    # entering Kolibri's cache turns it on without emptying it
    dataset_cache.clear()
    with dataset_cache:
        yield
