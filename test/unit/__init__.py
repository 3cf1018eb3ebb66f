"""In-process tests of pure code: no database, no Kolibri process."""
