"""Tests of the lab itself (``sync_lab``): its checks, reports, proxy and demo."""
