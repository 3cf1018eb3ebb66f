"""
A client's poll of a stage that a job of this very process runs is held for a
moment, and answered as soon as the stage is settled.

morango's client polls a stage the server holds about once a second (its back-off
stops at the local context's one second), whatever the stage's size: with a class
set of 32 devices waiting on the server's stages, some 30 polls a second, each a
full trip through Django, Kolibri's middleware and morango's view (10 ms of the
processor on a 2-core server). Under ``kolibri start`` the stage jobs run in the
same process and interpreter as those polls, so every poll is time taken from the
job the clients wait for.

The client sleeps a second after each answer, not before: a poll held for
:data:`POLL_HOLD_SECONDS` before it is answered makes the next one come that much
later, so a third fewer polls reach the server, and no client waits longer for its
stage, as the hold ends the moment the job settles the stage (see
:func:`stage_settled`). Waiting costs no processor and holds no database lock.

Only a process that runs stage jobs holds polls: elsewhere (uwsgi's workers, whose
jobs run in ``kolibri services``) a settled stage would not end the hold. And only
while the stages of several clients wait on it (:data:`POLL_HOLD_MIN_SESSIONS`):
a client or two polling take a few per cent of the processor, and are answered
at once, so a device syncing alone never sees a request held.
"""

import threading
import time

from django.db import transaction

__all__ = [
    "POLL_HOLD_SECONDS",
    "POLL_HOLD_MIN_SESSIONS",
    "stage_jobs_run_here",
    "stage_held_here",
    "hold_poll_while_stage_runs",
    "stage_settled",
]

#: The longest a poll of a stage still running is held before it is answered:
#: short beside a request's second, so a held poll is still a short request.
POLL_HOLD_SECONDS = 0.5
#: Polls are held only while the stages of at least this many transfer sessions
#: wait on this process's jobs: fewer clients' polls cost the job little.
POLL_HOLD_MIN_SESSIONS = 4
#: How long a session handed to a job counts towards
#: :data:`POLL_HOLD_MIN_SESSIONS`: a session closed while its stage ran (its
#: client gave up) is never settled here, and would otherwise count for ever.
HELD_SESSION_MEMORY_SECONDS = 3600.0
#: Past this many sessions held, every hold ends (its poll is answered at once)
#: and the memory of them is dropped.
_MAX_SESSIONS = 1000

_lock = threading.Lock()
# the sessions whose stage this process handed to a job and has not seen
# settled, with when (time.monotonic()), and the event each held poll of one
# waits on
_held_sessions = {}
_settled_events = {}
_runs_stage_jobs = threading.Event()


def stage_jobs_run_here():
    """Called as a stage job starts: from now on this process holds polls."""
    _runs_stage_jobs.set()


def stage_held_here(transfer_session_id):
    """
    Called when a request of this process hands a stage of the transfer session
    to a job: its polls may be held until the stage is settled. Remembered in
    memory, so that a poll costs no query to tell.
    """
    with _lock:
        if len(_held_sessions) >= _MAX_SESSIONS:
            _forget_all()
        _held_sessions[transfer_session_id] = time.monotonic()


def stage_settled(transfer_session_id):
    """
    A stage of the transfer session has been settled: answer its held polls, once
    the settling is committed, so they read it.
    """
    transaction.on_commit(lambda: _end_holds(transfer_session_id))


def _end_holds(transfer_session_id):
    with _lock:
        _held_sessions.pop(transfer_session_id, None)
        settled = _settled_events.pop(transfer_session_id, None)
    if settled is not None:
        settled.set()


def _forget_all():
    for settled in _settled_events.values():
        settled.set()
    _settled_events.clear()
    _held_sessions.clear()


def _sessions_waiting():
    """How many sessions handed to a job here within the memory wait on it."""
    since = time.monotonic() - HELD_SESSION_MEMORY_SECONDS
    return sum(1 for handed in _held_sessions.values() if handed > since)


def hold_poll_while_stage_runs(transfer_session_id):
    """
    Hold a poll of the transfer session for up to :data:`POLL_HOLD_SECONDS` while
    its stage, handed to a job by this process, is not settled, and the stages of
    :data:`POLL_HOLD_MIN_SESSIONS` sessions or more wait here; answer it the
    moment it is settled.

    :return: Whether the poll was held
    :rtype: bool
    """
    if not _runs_stage_jobs.is_set():
        return False
    with _lock:
        if transfer_session_id not in _held_sessions:
            return False
        if _sessions_waiting() < POLL_HOLD_MIN_SESSIONS:
            return False
        settled = _settled_events.setdefault(transfer_session_id, threading.Event())
    settled.wait(POLL_HOLD_SECONDS)
    return True
