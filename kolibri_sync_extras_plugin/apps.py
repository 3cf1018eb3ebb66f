"""
The plugin's Django app: checks the ``[Sync]`` options and hooks into request
boundaries once Django is ready.
"""

from django.apps import AppConfig


class SyncExtrasConfig(AppConfig):
    name = "kolibri_sync_extras_plugin"
    verbose_name = "Kolibri Sync Extras"

    def ready(self):
        from .config import get_background_settings
        from .config import get_retention_settings
        from .config import get_stage_job_limits
        from .limits import add_refusal_middleware
        from .limits import connect_refusal_signals
        from .request_boundary import connect_request_signals

        # fail at start-up, naming the option, rather than at a client's first sync
        get_background_settings()
        get_stage_job_limits()
        get_retention_settings()
        connect_request_signals()
        connect_refusal_signals()
        add_refusal_middleware()
