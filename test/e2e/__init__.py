"""
Tests that start real Kolibri processes (marked ``e2e``), from the run's template
homes (``test/lab_fixtures.py``).
"""
