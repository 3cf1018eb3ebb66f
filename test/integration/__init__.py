"""
In-process tests against a real Kolibri database: real morango sync sessions,
Kolibri's job storage, Django's test client; no Kolibri process started.
"""
