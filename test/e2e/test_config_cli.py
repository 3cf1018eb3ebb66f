"""
The [Sync] options as the real ``kolibri`` command reads them, in a fresh home
with this plugin enabled: a bad option makes it exit non-zero naming the option,
and an environment variable overrides ``options.ini``.
"""

import pytest

from kolibri_sync_extras_plugin.config import MAX_PULL_PAGE_SIZE
from sync_lab.harness.instances import PLUGIN
from sync_lab.harness.instances import KolibriInstance

pytestmark = pytest.mark.e2e


def _kolibri(args, options_ini="", **env):
    """
    Run the real ``kolibri`` command in a fresh home with this plugin enabled.

    :return: Its exit code and combined output
    :rtype: sync_lab.harness.instances.CommandResult
    """
    with KolibriInstance("cli") as instance:
        (instance.home / "options.ini").write_text(options_ini)
        return instance.kolibri(
            *args,
            check=False,
            timeout=300,
            env=dict(env, KOLIBRI_PLUGIN_ENABLE=PLUGIN),
        )


SHOW_SETTINGS = [
    "manage",
    "shell",
    "--command",
    "from kolibri_sync_extras_plugin.config import get_background_settings as g; "
    "s = g(); print('PULL', sorted(s.pull_stages)); print('PUSH', sorted(s.push_stages))",
]


def test_cli__misplaced_stage_in_options_ini__kolibri_exits_nonzero_naming_it():
    result = _kolibri(
        ["manage", "check"],
        options_ini="[Sync]\nBACKGROUND_INITIALIZATION_STAGES = serializing, cleanup\n",
    )

    assert result.returncode != 0
    assert "BACKGROUND_INITIALIZATION_STAGES" in result.output
    assert "'cleanup'" in result.output
    assert "serializing, queuing" in result.output


def test_cli__env_var_overrides_options_ini():
    result = _kolibri(
        SHOW_SETTINGS,
        options_ini=(
            "[Sync]\nBACKGROUND_FINALIZATION = False\n"
            'BACKGROUND_FINALIZATION_STAGES = "deserializing"\n'
        ),
        KOLIBRI_SYNC_BACKGROUND_FINALIZATION="true",
    )

    assert result.returncode == 0, result.output
    assert "PUSH ['deserializing']" in result.output
    assert "KOLIBRI_SYNC_BACKGROUND_FINALIZATION" in result.output


def test_cli__invalid_boolean__kolibri_exits_nonzero_naming_the_variable():
    result = _kolibri(
        ["manage", "check"], KOLIBRI_SYNC_BACKGROUND_INITIALIZATION="maybe"
    )

    assert result.returncode != 0
    assert "KOLIBRI_SYNC_BACKGROUND_INITIALIZATION" in result.output


def test_cli__pull_page_size_out_of_range__kolibri_exits_nonzero_naming_it():
    result = _kolibri(["manage", "check"], KOLIBRI_SYNC_PULL_PAGE_SIZE="999999")

    assert result.returncode != 0
    assert "PULL_PAGE_SIZE" in result.output
    assert "from 0 (off) to {}".format(MAX_PULL_PAGE_SIZE) in result.output
