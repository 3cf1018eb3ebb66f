"""
The ``[Sync]`` options this plugin adds to ``$KOLIBRI_HOME/options.ini``.

Data only: Kolibri reads this spec to validate types and apply defaults and
environment variables. Stage names are checked by :mod:`.config`, since the
option types Kolibri offers cannot express "a list drawn from these names".
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
        "INLINE_STAGE_RECORDS": {
            "type": "integer",
            "default": 100,
            "envvars": ("KOLIBRI_SYNC_INLINE_STAGE_RECORDS",),
            "description": """
                A background stage estimated to touch at most this many records runs
                in the request instead, so a small sync does not wait for the client
                to poll. 0 sends every configured stage to the background.
            """,
        },
        "PULL_PAGE_SIZE": {
            "type": "integer",
            "default": 2000,
            "envvars": ("KOLIBRI_SYNC_PULL_PAGE_SIZE",),
            "description": """
                Records the server sends per page of a pull when the client asked for
                fewer and its morango version is known to accept a larger page. 0
                sends what the client asked for.
            """,
        },
    }
}
