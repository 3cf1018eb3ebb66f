"""
The plugin's Django app: checks the ``[Sync]`` options and hooks into request
boundaries, transfer-session saves and morango's record of a transfer's stage
once Django is ready.
"""

from django.apps import AppConfig


class SyncExtrasConfig(AppConfig):
    name = "kolibri_sync_extras_plugin"
    verbose_name = "Kolibri Sync Extras"

    def ready(self):
        from .config import validate_sync_options
        from .config import warn_if_stage_jobs_cannot_start
        from .request.hooks import connect_request_signals
        from .request.limits import add_refusal_middleware
        from .request.limits import connect_refusal_signals
        from .request.pull_pages import connect_pull_pages
        from .session_saves import connect_session_saves
        from .stage_bookkeeping import install_stage_bookkeeping
        from .write_queue import install_write_queue

        # fail at start-up, naming the option, rather than at a client's first sync
        validate_sync_options()
        warn_if_stage_jobs_cannot_start()
        connect_request_signals()
        connect_refusal_signals()
        add_refusal_middleware()
        connect_pull_pages()
        connect_session_saves()
        install_stage_bookkeeping()
        install_write_queue()
