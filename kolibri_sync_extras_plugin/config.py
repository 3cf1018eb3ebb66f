"""
The one place that reads and validates the plugin's ``[Sync]`` options.

Options are read from Kolibri's ``OPTIONS`` each time they are asked for, so a test
(or an operator reloading options) sees the current values; parsing is cheap.
"""

import logging
from collections import namedtuple

from morango.constants import transfer_stages

from .errors import InvalidSyncOption

__all__ = [
    "INITIALIZATION_STAGES",
    "FINALIZATION_STAGES",
    "BackgroundSettings",
    "get_background_settings",
    "runs_in_background",
    "stage_jobs_can_start",
    "StageJobLimits",
    "get_stage_job_limits",
    "RetentionSettings",
    "get_retention_settings",
    "MAX_INLINE_STAGE_RECORDS",
    "MAX_PULL_PAGE_SIZE",
    "get_inline_stage_records",
    "get_pull_page_size",
    "MAX_STAGE_JOB_START_TIMEOUT",
    "get_stage_job_start_timeout",
    "validate_sync_options",
    "warn_if_stage_jobs_cannot_start",
]

logger = logging.getLogger(__name__)

SECTION = "Sync"

#: The most records a stage may be estimated at and still run in the request: a
#: stage of this size ran in well under 0.5 s on the lab's 2-core machine.
MAX_INLINE_STAGE_RECORDS = 1000
#: The largest pull page the server builds: a page is held whole in memory, as
#: model rows and as JSON (about 1 KB per record), while it is answered.
MAX_PULL_PAGE_SIZE = 5000

#: The longest a stage job may wait for its first worker, in seconds: a day.
MAX_STAGE_JOB_START_TIMEOUT = 86400

#: Stages the server runs before sending data, when a client pulls (server = producer).
INITIALIZATION_STAGES = (transfer_stages.SERIALIZING, transfer_stages.QUEUING)
#: Stages the server runs after receiving data, when a client pushes (server = receiver).
FINALIZATION_STAGES = (
    transfer_stages.DEQUEUING,
    transfer_stages.DESERIALIZING,
    transfer_stages.CLEANUP,
)

StageJobLimits = namedtuple("StageJobLimits", ("per_client", "total"))
StageJobLimits.__doc__ = """
How many stage jobs may wait or run at once: for one client instance, and for all.
"""

RetentionSettings = namedtuple(
    "RetentionSettings", ("completed_seconds", "failed_seconds", "interval_seconds")
)
RetentionSettings.__doc__ = """
How long finished stage jobs of closed transfer sessions stay in job storage, and
how often the job that clears them runs.
"""

BackgroundSettings = namedtuple("BackgroundSettings", ("pull_stages", "push_stages"))
BackgroundSettings.__doc__ = """
The stages to run in the background, as frozensets of morango stage names: empty
when the matching ``BACKGROUND_*`` switch is off.
"""


def _parse_stage_list(option, raw_value, allowed):
    """
    :param option: The option name, for error messages
    :param raw_value: A list of strings (Kolibri's ``force_list``) or a string
    :param allowed: The stage names this option may hold, in stage order
    :return: The stage names, validated
    :rtype: frozenset
    """
    if isinstance(raw_value, str):
        raw_value = [raw_value]
    stages = []
    for item in raw_value:
        # a quoted value in options.ini, or an environment variable, arrives whole
        for name in str(item).split(","):
            name = name.strip().strip("\"'").strip().lower()
            if name:
                stages.append(name)
    unknown = [name for name in stages if name not in allowed]
    if unknown:
        raise InvalidSyncOption(
            "[{section}] {option} = {value!r}: {bad} cannot run in the background here; "
            "allowed stages are: {allowed}".format(
                section=SECTION,
                option=option,
                value=",".join(stages),
                bad=", ".join(repr(name) for name in unknown),
                allowed=", ".join(allowed),
            )
        )
    return frozenset(stages)


def _enabled_stages(options, switch, stages_option, allowed):
    stages = _parse_stage_list(stages_option, options[stages_option], allowed)
    if not options[switch]:
        return frozenset()
    if not stages:
        raise InvalidSyncOption(
            "[{section}] {switch} is on but {stages_option} names no stage; "
            "name one or more of: {allowed}, or turn {switch} off".format(
                section=SECTION,
                switch=switch,
                stages_option=stages_option,
                allowed=", ".join(allowed),
            )
        )
    return stages


def get_background_settings(options=None):
    """
    Read and validate the ``[Sync]`` options.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: BackgroundSettings
    :raises InvalidSyncOption: when a stage list names a stage that option cannot hold
    """
    if options is None:
        from kolibri.utils.conf import OPTIONS

        options = OPTIONS
    sync_options = options[SECTION]
    return BackgroundSettings(
        pull_stages=_enabled_stages(
            sync_options,
            "BACKGROUND_INITIALIZATION",
            "BACKGROUND_INITIALIZATION_STAGES",
            INITIALIZATION_STAGES,
        ),
        push_stages=_enabled_stages(
            sync_options,
            "BACKGROUND_FINALIZATION",
            "BACKGROUND_FINALIZATION_STAGES",
            FINALIZATION_STAGES,
        ),
    )


def runs_in_background(stage, is_push):
    """
    The single rule for which stages leave the request: on a pull the server's
    configured initialization stages, on a push its configured finalization stages.

    :param stage: A ``transfer_stages`` constant
    :param is_push: Whether the transfer session is a push (client to server)
    :rtype: bool
    """
    background = get_background_settings()
    stages = background.push_stages if is_push else background.pull_stages
    return stage in stages and stage_jobs_can_start()


def stage_jobs_can_start(options=None):
    """
    Whether Kolibri's workers can start a job at all. From Kolibri 0.18 they
    cannot with ``[Tasks] USE_WORKER_MULTIPROCESSING`` on (see
    :func:`~kolibri_sync_extras_plugin.compat.workers_are_handed_a_log_queue`):
    every stage then runs in the request, as stock Kolibri runs it, rather than
    in a job that never starts.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: bool
    """
    from .compat import workers_are_handed_a_log_queue

    if options is None:
        from kolibri.utils.conf import OPTIONS

        options = OPTIONS
    multiprocessing = options.get("Tasks", {}).get("USE_WORKER_MULTIPROCESSING")
    return not (multiprocessing and workers_are_handed_a_log_queue())


def _sync_section(options):
    if options is None:
        from kolibri.utils.conf import OPTIONS

        options = OPTIONS
    return options[SECTION]


def _whole_number(options, option):
    """
    :return: The option's value, a whole number within the ``range`` its spec
        declares (see :mod:`.options`)
    :rtype: int
    :raises InvalidSyncOption: naming the option, its value and what is allowed
    """
    from .options import option_spec

    minimum, maximum = option_spec[SECTION][option]["range"]
    raw_value = _sync_section(options)[option]
    try:
        # a quoted value in options.ini, or an environment variable, arrives as text
        value = int(str(raw_value).strip().strip("\"'"))
    except ValueError:
        value = None
    if isinstance(raw_value, bool):
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        if maximum is None:
            allowed = "whole numbers of {} or more".format(minimum)
        else:
            allowed = "whole numbers from {}{} to {}".format(
                minimum, " (off)" if minimum == 0 else "", maximum
            )
        raise InvalidSyncOption(
            "[{section}] {option} = {value!r}: allowed values are {allowed}".format(
                section=SECTION, option=option, value=raw_value, allowed=allowed
            )
        )
    return value


def get_stage_job_limits(options=None):
    """
    Read and validate the caps on unfinished stage jobs.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: StageJobLimits
    :raises InvalidSyncOption: when a cap is not a whole number of 1 or more
    """
    return StageJobLimits(
        per_client=_whole_number(options, "MAX_STAGE_JOBS_PER_CLIENT"),
        total=_whole_number(options, "MAX_STAGE_JOBS"),
    )


def get_retention_settings(options=None):
    """
    Read and validate how long finished stage jobs are kept.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: RetentionSettings
    :raises InvalidSyncOption: when a period is negative, or the interval below 1
    """
    return RetentionSettings(
        completed_seconds=_whole_number(options, "COMPLETED_STAGE_JOB_RETENTION"),
        failed_seconds=_whole_number(options, "FAILED_STAGE_JOB_RETENTION"),
        interval_seconds=_whole_number(options, "STAGE_JOB_CLEANUP_INTERVAL"),
    )


def get_inline_stage_records(options=None):
    """
    The largest estimated stage, in records, that runs in the request although it
    is configured for the background (see :mod:`.request.inline`); 0 for none.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: int
    :raises InvalidSyncOption: for a value outside 0 to :data:`MAX_INLINE_STAGE_RECORDS`
    """
    return _whole_number(options, "INLINE_STAGE_RECORDS")


def get_pull_page_size(options=None):
    """
    The records per page the server sends a pull client known to accept larger
    pages (see :mod:`.request.pull_pages`); 0 to send what the client asks for.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: int
    :raises InvalidSyncOption: for a value outside 0 to :data:`MAX_PULL_PAGE_SIZE`
    """
    return _whole_number(options, "PULL_PAGE_SIZE")


def get_stage_job_start_timeout(options=None):
    """
    How long a stage job may wait for its first worker while no stage job runs,
    before the stage is ended as errored (see :mod:`.request.poll`).

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: int
    :raises InvalidSyncOption: for a value outside 10 to
        :data:`MAX_STAGE_JOB_START_TIMEOUT`
    """
    return _whole_number(options, "STAGE_JOB_START_TIMEOUT")


def validate_sync_options(options=None):
    """
    Read every ``[Sync]`` option once, so a bad value stops Kolibri at start-up with
    a message naming it rather than at a client's first sync.

    :raises InvalidSyncOption: naming the first option that holds a bad value
    """
    get_background_settings(options)
    get_stage_job_limits(options)
    get_retention_settings(options)
    get_inline_stage_records(options)
    get_pull_page_size(options)
    get_stage_job_start_timeout(options)


def warn_if_stage_jobs_cannot_start(options=None):
    """
    Say at start-up, naming the option, when background stages are configured but
    Kolibri's workers cannot start a job (see :func:`stage_jobs_can_start`).

    :return: Whether it warned
    :rtype: bool
    """
    background = get_background_settings(options)
    if not (background.pull_stages or background.push_stages):
        return False
    if stage_jobs_can_start(options):
        return False
    logger.warning(
        "[Tasks] USE_WORKER_MULTIPROCESSING is on, and this Kolibri's workers "
        "cannot start any job with it (each job's log queue cannot be sent to a "
        "worker process). Until it is set to False (in options.ini, or "
        "KOLIBRI_USE_WORKER_MULTIPROCESSING=False) and Kolibri restarted, every "
        "sync stage runs in the request, as in stock Kolibri, and [%s] "
        "BACKGROUND_INITIALIZATION and BACKGROUND_FINALIZATION have no effect.",
        SECTION,
    )
    return True
