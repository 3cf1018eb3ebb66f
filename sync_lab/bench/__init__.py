"""
What measures the plugin in syncs the :mod:`sync_lab.harness` sets up, and
reports it: the demo and benchmark, many clients at once, the write-lock probe,
the pieces benchmark, and their reports. See :mod:`sync_lab`.
"""
