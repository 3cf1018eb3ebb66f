"""
What the tests share besides fixtures, one module per concern; the fixtures
themselves are in ``test/conftest.py`` (in-process) and ``test/lab_fixtures.py``
(real Kolibri processes).
"""
