"""
``kolibri plugin disable``, run for real on a home whose job storage holds a stage
job: the command releases the plugin's background stages before it disables the
plugin, so no job of the plugin is left for Kolibri to list.
"""

import pytest

from sync_lab.harness.instances import PLUGIN
from sync_lab.harness.jobs import list_stage_jobs

pytestmark = pytest.mark.e2e

_ENQUEUE_A_STAGE_JOB = """
from kolibri_sync_extras_plugin.request.enqueue import enqueue_stage_job
enqueue_stage_job(dict(
    job_id="{}", facility_id=None, extra_metadata={{}},
    kwargs=dict(transfer_session_id="{}", stage="serializing",
                request_data={{}}, capabilities=[]),
))
""".format("a" * 32, "b" * 32)


@pytest.fixture(scope="module")
def disabled(tmp_path_factory, lab_templates):
    root = tmp_path_factory.mktemp("plugin-disable")
    server, _ = lab_templates.new_server(
        "sqlite", "disable-server", root=root, plugin=True
    )
    with server:
        server.manage("shell", "-c", _ENQUEUE_A_STAGE_JOB)
        jobs_before = list_stage_jobs(server)
        result = server.kolibri("plugin", "disable", PLUGIN, check=False)
        yield jobs_before, result, list_stage_jobs(server)


def test_plugin_disable__a_stage_job_in_storage__released_then_disabled(disabled):
    jobs_before, result, jobs_after = disabled

    assert [job["job_id"] for job in jobs_before] == ["a" * 32]
    assert result.ok, result.tail()
    assert "Released the background stages" in result.output, result.tail()
    assert jobs_after == []
