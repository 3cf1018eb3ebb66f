"""
What sets up syncs between real local Kolibri instances and checks them: the
instances, their data, the template homes runs start from, the round trip, faults,
a timing proxy, and what the lab asks of each instance. See :mod:`sync_lab`.
"""
