"""
A lab for facility syncs between real local Kolibri instances.

Each instance has its own ``KOLIBRI_HOME`` and runs in subprocesses of the installed
``kolibri``; nothing here touches the database of the process that imports it, so
the lab can drive instances from a test suite that has its own Kolibri set up.

- :mod:`sync_lab.instances`: one Kolibri instance (home, options, commands, server)
- :mod:`sync_lab.dataset`: records to sync, created and counted inside an instance
- :mod:`sync_lab.jobs`: the plugin's background stage jobs on a server
- :mod:`sync_lab.proxy`: a timing reverse proxy to put in front of a server
- :mod:`sync_lab.demo`: the demo and benchmark, ``python -m sync_lab.demo``
"""
