"""
morango's record of where a transfer stands, written with fewer turns at the
database's write lock.

Around every stage it invokes, morango's session controller records the stage
and its status on the transfer session, and the time on the transfer session and
on its sync session (``LocalSessionContext.update_state``): once as the stage
starts and once as it returns. Each record is two writes outside any
transaction, and on SQLite each write waits for the write lock on its own. A
chunk upload is five turns at the lock, four of them this record's; with a
class set of devices syncing at once, those waits are most of a slow request's
time (``docs/many-clients.md``).

The plugin keeps morango's record with two differences:

- **Both rows in one transaction.** The transfer session and its sync session
  are written together: a reader sees neither or both, as if morango's second
  write had followed its first at once. One turn at the lock instead of two.
- **The time alone, at most every** :data:`ACTIVITY_REFRESH`. morango reads the
  row again just before it writes. When the stage and status to record are those
  the row holds and its last activity is under :data:`ACTIVITY_REFRESH` old,
  nothing is written. morango's write would have put back the values it read
  and moved the times forward, so the outcome is that of morango's write made
  at the moment of the read, with the times kept at most
  :data:`ACTIVITY_REFRESH` older. Whoever reads the times looks further back than
  that: the plugin's own checks by a minute or more, morango's and Kolibri's
  clean-ups by hours.

A write that changes the stage or its status, however soon after the last one,
is made as morango 0.19 makes it, naming the fields it changes, on every line.
Before Kolibri 0.19 morango saved both rows whole, which puts back every column
as the request read it (see :mod:`.session_saves`).
"""

import datetime

from django.utils import timezone

from .stage_status import record_stage

__all__ = [
    "ACTIVITY_REFRESH",
    "install_stage_bookkeeping",
    "only_the_time_would_change",
    "uninstall_stage_bookkeeping",
]

#: How long a transfer session's last activity may stand while its stage and
#: status are recorded again unchanged. The plugin's own readers of the time look
#: back at least ``MISSING_JOB_GRACE_SECONDS`` (10 s) and mostly minutes.
ACTIVITY_REFRESH = datetime.timedelta(seconds=5)

_MORANGO_UPDATE_STATE = "_sync_extras_morango_update_state"


def only_the_time_would_change(transfer_session, stage, stage_status):
    """
    :param transfer_session: The row as just read from the database
    :return: Whether recording ``stage`` and ``stage_status`` would change nothing
        but a last activity that is under :data:`ACTIVITY_REFRESH` old
    :rtype: bool
    """
    if stage is not None and stage != transfer_session.transfer_stage:
        return False
    if (
        stage_status is not None
        and stage_status != transfer_session.transfer_stage_status
    ):
        return False
    last_activity = transfer_session.last_activity_timestamp
    if last_activity is None:
        return False
    age = timezone.now() - last_activity
    # a clock set back leaves the time in the future: write it again
    return datetime.timedelta(0) <= age < ACTIVITY_REFRESH


def update_state(context, stage=None, stage_status=None):
    """``LocalSessionContext.update_state``, with the differences above."""
    transfer_session = getattr(context, "transfer_session", None)
    if transfer_session is None:
        return
    # as morango does: the stage may have moved on in another writer meanwhile
    transfer_session.refresh_from_db()
    if stage is None and stage_status is None:
        return
    if only_the_time_would_change(transfer_session, stage, stage_status):
        return
    record_stage(transfer_session, stage, stage_status)


def install_stage_bookkeeping():
    """Make morango's local contexts record a transfer's state as above."""
    from morango.sync.context import LocalSessionContext

    if getattr(LocalSessionContext, _MORANGO_UPDATE_STATE, None) is None:
        setattr(
            LocalSessionContext, _MORANGO_UPDATE_STATE, LocalSessionContext.update_state
        )
        LocalSessionContext.update_state = update_state


def uninstall_stage_bookkeeping():
    """Give morango's local contexts their own way back (for comparisons)."""
    from morango.sync.context import LocalSessionContext

    original = getattr(LocalSessionContext, _MORANGO_UPDATE_STATE, None)
    if original is not None:
        LocalSessionContext.update_state = original
        delattr(LocalSessionContext, _MORANGO_UPDATE_STATE)
