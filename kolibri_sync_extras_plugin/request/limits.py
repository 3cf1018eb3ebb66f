"""
Caps on the stage jobs that clients can leave waiting on a server.

A request for a background stage returns at once and leaves a job that survives
restarts, so a client asking for stages in a loop (any holder of a certificate can)
could fill job storage and hold Kolibri's workers. Before a stage is handed to a
job, the unfinished stage jobs of its client instance and of all clients are
counted; past ``[Sync] MAX_STAGE_JOBS_PER_CLIENT`` or ``[Sync] MAX_STAGE_JOBS``
the stage is refused instead of queued: it ends ERRORED, the server logs why, and
the client's request fails with HTTP 503 whose detail, and status line, name the
cap.

The closing ``cleanup`` of a push is never refused: the push's data is applied by
then, and a refusal would leave the client reporting a failed sync and Kolibri's
post-sync work undone. It still counts, and is counted, like any stage job; the
stages before it were capped already.

A stage that passes is queued only when its request ends (see :mod:`.hooks`),
but its place is taken at once: its job is added to job storage PENDING, which no
worker runs (see :func:`~.enqueue.reserve_stage_job`), and counts like any
unfinished job. Counting and reserving happen under one lock of the whole server
(see :mod:`~kolibri_sync_extras_plugin.server_lock`), so of requests that arrive
together, in one process or in several (uwsgi's processes, web servers on several
hosts sharing a PostgreSQL database), no two pass the same last place.
"""

import logging

from kolibri.core.tasks.job import State
from morango.constants import transfer_stages

from ..compat import jobs_in_states
from ..config import FINALIZATION_STAGES
from ..config import INITIALIZATION_STAGES
from ..config import get_stage_job_limits
from ..errors import StageJobLimitReached
from ..server_lock import server_wide_lock
from ..stage_status import RUN_STAGE_TASK
from ..stage_status import SYNC_EXTRAS_QUEUE
from ..stage_status import is_waiting
from ..stage_status import open_sessions_by_job_id
from .enqueue import reserve_stage_job
from .enqueue import settle_abandoned_reservations
from .identity import CLIENT_METADATA_KEY
from .identity import client_key

logger = logging.getLogger(__name__)

__all__ = [
    "UNFINISHED_JOB_STATES",
    "unfinished_stage_jobs",
    "CAPS_LOCK_NAME",
    "reserve_within_limits",
    "connect_refusal_signals",
    "REFUSAL_MIDDLEWARE",
    "RefusalReasonMiddleware",
    "add_refusal_middleware",
]

#: Job states in which a stage job still holds a place in job storage's queue.
UNFINISHED_JOB_STATES = [
    State.PENDING,
    State.SCHEDULED,
    State.QUEUED,
    State.SELECTED,
    State.RUNNING,
    State.CANCELING,
]

_PER_CLIENT_OPTION = "MAX_STAGE_JOBS_PER_CLIENT"
_TOTAL_OPTION = "MAX_STAGE_JOBS"

#: The server-wide lock that counting and reserving happen under.
CAPS_LOCK_NAME = "stage_job_caps"


def unfinished_stage_jobs():
    """
    The stage jobs in job storage that are waiting or running, counting a job
    that gave its worker back to wait for its writer's turn: Kolibri marks it
    COMPLETED, then queues it again in a transaction of its own, and between the
    two it still serves an open session's stage. Both kinds are read in one
    query: read one after the other, a job requeued between the two reads would
    be in neither.

    :rtype: list[kolibri.core.tasks.job.Job]
    """
    jobs = jobs_in_states(
        UNFINISHED_JOB_STATES + [State.COMPLETED],
        queue=SYNC_EXTRAS_QUEUE,
        func=RUN_STAGE_TASK,
    )
    unfinished = [job for job in jobs if job.state != State.COMPLETED]
    between_turns = [
        job for job in jobs if job.state == State.COMPLETED and is_waiting(job.result)
    ]
    if between_turns:
        of_open_sessions = open_sessions_by_job_id()
        unfinished += [job for job in between_turns if job.job_id in of_open_sessions]
    return unfinished


def _client_of_job(job):
    """The client key of an unfinished stage job (1.0.0 kept the instance id)."""
    metadata = job.extra_metadata or {}
    key = metadata.get(CLIENT_METADATA_KEY)
    if key:
        return key
    return "instance:{}".format(metadata.get("client_instance_id"))


def _refusal(context, option, count, cap, whose):
    message = (
        "Stage '{stage}' refused: this server already has {count} sync stage jobs "
        "waiting or running {whose}, the most [Sync] {option} = {cap} allows. Sync "
        "again once they have finished, or raise [Sync] {option} in the server's "
        "options.ini."
    ).format(stage=context.stage, count=count, whose=whose, option=option, cap=cap)
    logger.warning(
        "Refused stage %s of transfer session %s for client %s (instance %s): %d "
        "stage jobs waiting or running %s, [Sync] %s = %d",
        context.stage,
        context.transfer_session.id,
        client_key(context.sync_session),
        getattr(
            context.sync_session.client_instance_id,
            "hex",
            context.sync_session.client_instance_id,
        ),
        count,
        whose,
        option,
        cap,
    )
    return StageJobLimitReached(message)


def reserve_within_limits(context, job_request):
    """
    Refuse the context's stage if its client, or all clients together, already have
    as many unfinished stage jobs as the caps allow; otherwise reserve its job (see
    :func:`~.enqueue.reserve_stage_job`). Counting and reserving are one step for
    every process of the server; reservations whose process died are settled
    first, so they hold no place.

    :type context: morango.sync.context.LocalSessionContext
    :param job_request: The stage's job, see :func:`~.enqueue.stage_job_request`
    :return: Whether this request reserved the job and is to queue it
    :rtype: bool
    :raises StageJobLimitReached: naming the cap that was reached
    """
    with server_wide_lock(CAPS_LOCK_NAME):
        if context.stage != transfer_stages.CLEANUP:
            # cleanup is never refused: the data is in (see the module's docstring)
            _refuse_over_limits(context, job_request["job_id"])
        return reserve_stage_job(job_request)


def _refuse_over_limits(context, own_job_id):
    limits = get_stage_job_limits()
    client = client_key(context.sync_session)
    unfinished = unfinished_stage_jobs()
    if any(job.state == State.PENDING for job in unfinished):
        if settle_abandoned_reservations():
            unfinished = unfinished_stage_jobs()
    clients_by_job = {job.job_id: _client_of_job(job) for job in unfinished}
    clients_by_job.pop(own_job_id, None)
    if len(clients_by_job) >= limits.total:
        raise _refusal(
            context, _TOTAL_OPTION, len(clients_by_job), limits.total, "in all"
        )
    of_client = sum(1 for owner in clients_by_job.values() if owner == client)
    if of_client >= limits.per_client:
        raise _refusal(
            context,
            _PER_CLIENT_OPTION,
            of_client,
            limits.per_client,
            "for this device",
        )


def _raise_refusal(context=None, **kwargs):
    """
    morango's controller turns any exception of an operation into an ERRORED stage
    and answers the client's request with that status alone. Raised again from the
    stage's ``completed`` signal (fired after the stage was marked ERRORED), the
    refusal leaves the controller and reaches the client as an HTTP 503 with its
    detail.
    """
    error = getattr(context, "error", None)
    if isinstance(error, StageJobLimitReached):
        raise error


_connected = []


def connect_refusal_signals():
    """Let a refused stage fail its client's request with the refusal's message."""
    if _connected:
        return
    from morango.api.viewsets import session_controller

    for stage in INITIALIZATION_STAGES + FINALIZATION_STAGES:
        getattr(session_controller.signals, stage).completed.connect(_raise_refusal)
    _connected.append(True)


#: The middleware that puts a refusal's message in the response's status line.
REFUSAL_MIDDLEWARE = "kolibri_sync_extras_plugin.request.limits.RefusalReasonMiddleware"


class RefusalReasonMiddleware:
    """
    Puts a refusal's message in the 503's status line as well as its body: a
    morango client logs the body of an error response only when the response is
    truthy, which a 4xx/5xx ``requests`` response never is, so the status line
    (which ``requests`` puts in its ``HTTPError``) is what the client prints.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        data = getattr(response, "data", None)
        detail = data.get("detail") if isinstance(data, dict) else None
        if getattr(detail, "code", None) == StageJobLimitReached.default_code:
            response.reason_phrase = str(detail)
        return response


def add_refusal_middleware():
    """
    Add :class:`RefusalReasonMiddleware` to Django's middleware. Kolibri lets a
    plugin's settings extend only a few settings, so this runs when the app is
    ready, before Django's request handler loads its middleware.
    """
    from django.conf import settings

    if REFUSAL_MIDDLEWARE not in settings.MIDDLEWARE:
        settings.MIDDLEWARE = list(settings.MIDDLEWARE) + [REFUSAL_MIDDLEWARE]
