"""
The [Sync] options: defaults, accepted spellings, and errors that say what to fix.
The same errors from the real ``kolibri`` command are in
``test/e2e/test_config_cli.py``.
"""

import pytest
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.compat import workers_are_handed_a_log_queue
from kolibri_sync_extras_plugin.config import MAX_INLINE_STAGE_RECORDS
from kolibri_sync_extras_plugin.config import MAX_PULL_PAGE_SIZE
from kolibri_sync_extras_plugin.config import get_background_settings
from kolibri_sync_extras_plugin.config import get_inline_stage_records
from kolibri_sync_extras_plugin.config import get_pull_page_size
from kolibri_sync_extras_plugin.config import get_retention_settings
from kolibri_sync_extras_plugin.config import get_stage_job_limits
from kolibri_sync_extras_plugin.config import runs_in_background
from kolibri_sync_extras_plugin.config import stage_jobs_can_start
from kolibri_sync_extras_plugin.config import warn_if_stage_jobs_cannot_start
from kolibri_sync_extras_plugin.errors import InvalidSyncOption
from kolibri_sync_extras_plugin.options import option_spec

from ..helpers.options import sync_options


def _options(**sync):
    defaults = {name: spec["default"] for name, spec in option_spec["Sync"].items()}
    defaults.update(sync)
    return {"Sync": defaults}


def test_defaults__both_switches_off__nothing_runs_in_the_background():
    background = get_background_settings(_options())

    assert background.pull_stages == frozenset()
    assert background.push_stages == frozenset()


def test_switches_on__default_stage_lists_apply():
    background = get_background_settings(
        _options(BACKGROUND_INITIALIZATION=True, BACKGROUND_FINALIZATION=True)
    )

    assert background.pull_stages == {"serializing", "queuing"}
    assert background.push_stages == {"dequeuing", "deserializing", "cleanup"}


@pytest.mark.parametrize(
    "raw_value",
    [
        ['"serializing"'],  # quoted in options.ini, as the documented example
        "serializing",  # an environment variable
        [" serializing "],
        ["Serializing", ""],
    ],
)
def test_stage_list__quotes_spaces_and_case__are_accepted(raw_value):
    background = get_background_settings(
        _options(
            BACKGROUND_INITIALIZATION=True, BACKGROUND_INITIALIZATION_STAGES=raw_value
        )
    )

    assert background.pull_stages == {"serializing"}


def test_stage_list__quoted_comma_list__is_split():
    background = get_background_settings(
        _options(
            BACKGROUND_FINALIZATION=True,
            BACKGROUND_FINALIZATION_STAGES=['"deserializing, cleanup"'],
        )
    )

    assert background.push_stages == {"deserializing", "cleanup"}


def test_stage_list__unknown_stage__error_names_option_value_and_allowed_stages():
    with pytest.raises(InvalidSyncOption) as error:
        get_background_settings(
            _options(
                BACKGROUND_INITIALIZATION=True,
                BACKGROUND_INITIALIZATION_STAGES=["serializing", "serialising"],
            )
        )

    message = str(error.value)
    assert "BACKGROUND_INITIALIZATION_STAGES" in message
    assert "'serialising'" in message
    assert "allowed stages are: serializing, queuing" in message


def test_stage_list__finalization_stage_under_initialization__is_rejected():
    with pytest.raises(InvalidSyncOption) as error:
        get_background_settings(
            _options(
                BACKGROUND_INITIALIZATION=True,
                BACKGROUND_INITIALIZATION_STAGES=["deserializing"],
            )
        )

    assert "'deserializing'" in str(error.value)


def test_stage_list__typo_while_switch_off__is_still_rejected():
    with pytest.raises(InvalidSyncOption):
        get_background_settings(_options(BACKGROUND_FINALIZATION_STAGES=["dequeueing"]))


def test_stage_list__empty_while_switch_on__is_rejected():
    with pytest.raises(InvalidSyncOption) as error:
        get_background_settings(
            _options(BACKGROUND_FINALIZATION=True, BACKGROUND_FINALIZATION_STAGES=[""])
        )

    assert "names no stage" in str(error.value)


def test_stage_list__empty_while_switch_off__is_accepted():
    background = get_background_settings(_options(BACKGROUND_FINALIZATION_STAGES=[""]))

    assert background.push_stages == frozenset()


def test_runs_in_background__stage_belongs_to_its_direction_only():
    with sync_options(BACKGROUND_INITIALIZATION=True, BACKGROUND_FINALIZATION=True):
        assert runs_in_background(transfer_stages.SERIALIZING, is_push=False)
        assert not runs_in_background(transfer_stages.SERIALIZING, is_push=True)
        assert runs_in_background(transfer_stages.DESERIALIZING, is_push=True)
        assert not runs_in_background(transfer_stages.DESERIALIZING, is_push=False)
        assert not runs_in_background(transfer_stages.TRANSFERRING, is_push=True)


def test_stage_job_limits__defaults__four_per_client_a_hundred_in_all():
    limits = get_stage_job_limits(_options())

    assert (limits.per_client, limits.total) == (4, 100)


def test_retention__defaults__an_hour_completed_three_days_failed():
    retention = get_retention_settings(_options())

    assert retention.completed_seconds == 3600
    assert retention.failed_seconds == 3 * 24 * 3600
    assert retention.interval_seconds == 600


@pytest.mark.parametrize(
    "option, value",
    [
        ("MAX_STAGE_JOBS_PER_CLIENT", 0),
        ("MAX_STAGE_JOBS", -1),
        ("MAX_STAGE_JOBS", True),
    ],
)
def test_stage_job_limits__below_one__error_names_option_and_value(option, value):
    with pytest.raises(InvalidSyncOption) as error:
        get_stage_job_limits(_options(**{option: value}))

    assert "[Sync] {} = {!r}".format(option, value) in str(error.value)
    assert "whole numbers of 1 or more" in str(error.value)


@pytest.mark.parametrize(
    "option, value",
    [
        ("COMPLETED_STAGE_JOB_RETENTION", -1),
        ("FAILED_STAGE_JOB_RETENTION", -5),
        ("STAGE_JOB_CLEANUP_INTERVAL", 0),
    ],
)
def test_retention__out_of_range__error_names_option_and_value(option, value):
    with pytest.raises(InvalidSyncOption) as error:
        get_retention_settings(_options(**{option: value}))

    assert "[Sync] {} = {!r}".format(option, value) in str(error.value)


def test_retention__zero_retention__accepted():
    retention = get_retention_settings(_options(COMPLETED_STAGE_JOB_RETENTION=0))

    assert retention.completed_seconds == 0


def test_defaults__small_stages_inline_and_pull_pages_of_2000():
    assert get_inline_stage_records(_options()) == 100
    assert get_pull_page_size(_options()) == 2000


@pytest.mark.parametrize(
    "getter, option",
    [
        (get_inline_stage_records, "INLINE_STAGE_RECORDS"),
        (get_pull_page_size, "PULL_PAGE_SIZE"),
    ],
)
@pytest.mark.parametrize("raw_value, value", [(0, 0), ("250", 250), ('"250"', 250)])
def test_counts__zero_numbers_and_quoted_numbers__are_accepted(
    getter, option, raw_value, value
):
    assert getter(_options(**{option: raw_value})) == value


@pytest.mark.parametrize(
    "getter, option, maximum",
    [
        (get_inline_stage_records, "INLINE_STAGE_RECORDS", MAX_INLINE_STAGE_RECORDS),
        (get_pull_page_size, "PULL_PAGE_SIZE", MAX_PULL_PAGE_SIZE),
    ],
)
@pytest.mark.parametrize("bad", [-1, "lots", "above"])
def test_counts__out_of_range_or_not_a_number__error_names_option_and_range(
    getter, option, maximum, bad
):
    if bad == "above":
        bad = maximum + 1
    with pytest.raises(InvalidSyncOption) as error:
        getter(_options(**{option: bad}))

    message = str(error.value)
    assert option in message
    assert repr(bad) in message
    assert "from 0 (off) to {}".format(maximum) in message


def _with_worker_multiprocessing(options, on):
    return dict(options, Tasks={"USE_WORKER_MULTIPROCESSING": on})


def test_worker_multiprocessing_off__stage_jobs_can_start():
    options = _with_worker_multiprocessing(_options(), False)

    assert stage_jobs_can_start(options)
    assert not warn_if_stage_jobs_cannot_start(options)


@pytest.mark.skipif(
    not workers_are_handed_a_log_queue(),
    reason="Kolibri before 0.18 gives its workers no log queue",
)
def test_worker_multiprocessing_on__no_job_can_start__a_warning_names_the_option(
    caplog,
):
    options = _with_worker_multiprocessing(
        _options(BACKGROUND_INITIALIZATION=True, BACKGROUND_FINALIZATION=True), True
    )

    assert not stage_jobs_can_start(options)
    assert warn_if_stage_jobs_cannot_start(options)
    assert "[Tasks] USE_WORKER_MULTIPROCESSING is on" in caplog.text
    assert "every sync stage runs in the request" in caplog.text


def test_worker_multiprocessing_on__background_off__no_warning(caplog):
    options = _with_worker_multiprocessing(_options(), True)

    assert not warn_if_stage_jobs_cannot_start(options)
    assert caplog.text == ""


@pytest.mark.skipif(
    workers_are_handed_a_log_queue(),
    reason="Kolibri 0.18 on gives its workers a log queue",
)
def test_worker_multiprocessing_on__before_0_18__stage_jobs_can_start():
    options = _with_worker_multiprocessing(_options(), True)

    assert stage_jobs_can_start(options)
