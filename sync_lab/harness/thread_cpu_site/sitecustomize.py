"""
Loaded by every process of a server whose :mod:`sync_lab.harness.thread_cpu`
timing is on (this folder is put on its ``PYTHONPATH``): times its requests and
jobs.
"""

from sync_lab.harness.thread_cpu import install

install()
