"""
A lab for facility syncs between real local Kolibri instances.

Each instance has its own ``KOLIBRI_HOME`` and runs in subprocesses of the installed
``kolibri``; nothing here touches the database of the process that imports it, so
the lab can drive instances from a test suite that has its own Kolibri set up.

:mod:`sync_lab.harness` sets up syncs and checks them:

- :mod:`sync_lab.harness.instances`: one Kolibri instance (home, options,
  commands, server)
- :mod:`sync_lab.harness.templates`: template homes made once, copied for each run
- :mod:`sync_lab.harness.dataset`: records to sync, created and counted inside an
  instance
- :mod:`sync_lab.harness.scenario`: the round trip (pull, new activity, push)
- :mod:`sync_lab.harness.checks`: what must hold on each side after a sync
- :mod:`sync_lab.harness.jobs`: the plugin's background stage jobs on a server
- :mod:`sync_lab.harness.proxy`: a timing reverse proxy to put in front of a server
- :mod:`sync_lab.harness.faults`, :mod:`sync_lab.harness.split`,
  :mod:`sync_lab.harness.flood`, :mod:`sync_lab.harness.churn`: a killed server, a
  server split from its job workers, a flooding client, the server's own users
  writing
- :mod:`sync_lab.harness.postgres`, :mod:`sync_lab.harness.lines`: a throw-away
  PostgreSQL cluster, and the Kolibri lines installed in this checkout

:mod:`sync_lab.bench` measures and reports:

- :mod:`sync_lab.bench.demo`: the demo and benchmark, ``python -m sync_lab.demo``
- :mod:`sync_lab.bench.many_clients`: many clients syncing at once (``--clients``)
- :mod:`sync_lab.bench.write_lock`: the probe of a SQLite server's write lock
- :mod:`sync_lab.bench.pieces_bench`: ``python -m sync_lab.pieces_bench``
- :mod:`sync_lab.bench.report`: stage timings, tables and charts
"""
