"""
The one place that reads and validates the plugin's ``[Sync]`` options.

Options are read from Kolibri's ``OPTIONS`` each time they are asked for, so a test
(or an operator reloading options) sees the current values; parsing is cheap.
"""

from collections import namedtuple

from morango.constants import transfer_stages

from .errors import InvalidSyncOption

__all__ = [
    "INITIALIZATION_STAGES",
    "FINALIZATION_STAGES",
    "BackgroundSettings",
    "get_background_settings",
    "runs_in_background",
    "StageJobLimits",
    "get_stage_job_limits",
    "RetentionSettings",
    "get_retention_settings",
]

SECTION = "Sync"

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
    return stage in stages


def _sync_section(options):
    if options is None:
        from kolibri.utils.conf import OPTIONS

        options = OPTIONS
    return options[SECTION]


def _whole_number(sync_options, option, minimum):
    """
    :return: The option's value, checked to be a whole number of at least ``minimum``
    :rtype: int
    :raises InvalidSyncOption: naming the option, its value and what is allowed
    """
    value = sync_options[option]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSyncOption(
            "[{section}] {option} = {value!r}: give a whole number of {minimum} or "
            "more".format(section=SECTION, option=option, value=value, minimum=minimum)
        )
    return value


def get_stage_job_limits(options=None):
    """
    Read and validate the caps on unfinished stage jobs.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: StageJobLimits
    :raises InvalidSyncOption: when a cap is not a whole number of 1 or more
    """
    sync_options = _sync_section(options)
    return StageJobLimits(
        per_client=_whole_number(sync_options, "MAX_STAGE_JOBS_PER_CLIENT", 1),
        total=_whole_number(sync_options, "MAX_STAGE_JOBS", 1),
    )


def get_retention_settings(options=None):
    """
    Read and validate how long finished stage jobs are kept.

    :param options: Kolibri's options mapping; defaults to ``kolibri.utils.conf.OPTIONS``
    :rtype: RetentionSettings
    :raises InvalidSyncOption: when a period is negative, or the interval below 1
    """
    sync_options = _sync_section(options)
    return RetentionSettings(
        completed_seconds=_whole_number(
            sync_options, "COMPLETED_STAGE_JOB_RETENTION", 0
        ),
        failed_seconds=_whole_number(sync_options, "FAILED_STAGE_JOB_RETENTION", 0),
        interval_seconds=_whole_number(sync_options, "STAGE_JOB_CLEANUP_INTERVAL", 1),
    )
