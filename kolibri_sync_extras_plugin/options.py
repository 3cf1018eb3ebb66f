"""
The ``[Sync]`` options this plugin adds to ``$KOLIBRI_HOME/options.ini``.

Data only: Kolibri reads this spec to validate types and apply defaults and
environment variables. Stage names are checked by :mod:`.config`, since the
option types Kolibri offers cannot express "a list drawn from these names".

A whole number's ``range`` (lowest, highest or ``None``) is declared here and
checked by :mod:`.config`, which names the option, its value and the range when
a value is outside it. Kolibri's own bounds (``"options": (min, max)``) would stop
Kolibri with configobj's "the value is too big", which does not say what is
allowed.
"""

option_spec = {
    "Sync": {
        "BACKGROUND_INITIALIZATION": {
            "type": "boolean",
            "default": False,
            "envvars": ("KOLIBRI_SYNC_BACKGROUND_INITIALIZATION",),
            "description": """
                When a client pulls, run the server's initialization stages in a Kolibri
                background job instead of inside the HTTP request.
            """,
        },
        "BACKGROUND_INITIALIZATION_STAGES": {
            "type": "force_list",
            "default": ["serializing", "queuing"],
            "envvars": ("KOLIBRI_SYNC_BACKGROUND_INITIALIZATION_STAGES",),
            "description": """
                Comma separated initialization stages to run in the background: any of
                serializing, queuing.
            """,
        },
        "BACKGROUND_FINALIZATION": {
            "type": "boolean",
            "default": False,
            "envvars": ("KOLIBRI_SYNC_BACKGROUND_FINALIZATION",),
            "description": """
                When a client pushes, run the server's finalization stages in a Kolibri
                background job instead of inside the HTTP request.
            """,
        },
        "BACKGROUND_FINALIZATION_STAGES": {
            "type": "force_list",
            "default": ["dequeuing", "deserializing", "cleanup"],
            "envvars": ("KOLIBRI_SYNC_BACKGROUND_FINALIZATION_STAGES",),
            "description": """
                Comma separated finalization stages to run in the background: any of
                dequeuing, deserializing, cleanup.
            """,
        },
        "MAX_STAGE_JOBS_PER_CLIENT": {
            "type": "integer",
            "range": (1, None),
            "default": 4,
            "envvars": ("KOLIBRI_SYNC_MAX_STAGE_JOBS_PER_CLIENT",),
            "description": """
                How many background stage jobs one client device may have waiting or
                running at once. A syncing device waits on one stage at a time; a request
                for a stage beyond this is refused (HTTP 503) instead of queued.
            """,
        },
        "MAX_STAGE_JOBS": {
            "type": "integer",
            "range": (1, None),
            "default": 100,
            "envvars": ("KOLIBRI_SYNC_MAX_STAGE_JOBS",),
            "description": """
                How many background stage jobs all clients together may have waiting or
                running at once; a request for a stage beyond this is refused (HTTP 503).
            """,
        },
        "COMPLETED_STAGE_JOB_RETENTION": {
            "type": "integer",
            "range": (0, None),
            "default": 3600,
            "envvars": ("KOLIBRI_SYNC_COMPLETED_STAGE_JOB_RETENTION",),
            "description": """
                Seconds a completed stage job stays in Kolibri's job storage after it
                finished, once its transfer session has closed.
            """,
        },
        "FAILED_STAGE_JOB_RETENTION": {
            "type": "integer",
            "range": (0, None),
            "default": 259200,
            "envvars": ("KOLIBRI_SYNC_FAILED_STAGE_JOB_RETENTION",),
            "description": """
                Seconds a failed or cancelled stage job stays in Kolibri's job storage
                after it finished, once its transfer session has closed.
            """,
        },
        "STAGE_JOB_CLEANUP_INTERVAL": {
            "type": "integer",
            "range": (1, None),
            "default": 600,
            "envvars": ("KOLIBRI_SYNC_STAGE_JOB_CLEANUP_INTERVAL",),
            "description": """
                Seconds between two runs of the Kolibri job that clears stage jobs past
                their retention.
            """,
        },
        "STAGE_JOB_START_TIMEOUT": {
            "type": "integer",
            "range": (10, 86400),
            "default": 300,
            "envvars": ("KOLIBRI_SYNC_STAGE_JOB_START_TIMEOUT",),
            "description": """
                Seconds a stage job may wait for its first worker while no stage job
                runs on the server; past it the client's next poll ends the stage as
                errored, saying that no background worker is running, instead of
                polling for ever.
            """,
        },
        "INLINE_STAGE_RECORDS": {
            "type": "integer",
            "range": (0, 1000),
            "default": 100,
            "envvars": ("KOLIBRI_SYNC_INLINE_STAGE_RECORDS",),
            "description": """
                A background stage estimated to touch at most this many records runs
                in the request instead, so a small sync does not wait for the client
                to poll, unless other devices are syncing at the same time. 0 sends
                every configured stage to the background.
            """,
        },
        "PULL_PAGE_SIZE": {
            "type": "integer",
            "range": (0, 5000),
            "default": 2000,
            "envvars": ("KOLIBRI_SYNC_PULL_PAGE_SIZE",),
            "description": """
                The most records the server sends per page of a pull when the client
                asked for fewer and its morango version is known to accept a larger
                page; a page is cut to what the server answers in about 0.3 s. 0
                sends what the client asked for.
            """,
        },
    }
}
