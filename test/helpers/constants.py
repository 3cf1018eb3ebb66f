"""Values several test modules agree on, defined once."""

# the FSIC of a client that holds no facility data yet
from sync_lab.harness.flood import EMPTY_FSIC

__all__ = [
    "ALL_DATABASES",
    "EMPTY_FSIC",
    "FACILITY_NAME",
    "LEARNERS",
    "PULL_STAGES",
    "PUSH_STAGES",
    "BACKGROUND_EVERYTHING",
]

#: For ``pytest.mark.django_db``: Kolibri keeps job storage in a database of its own.
ALL_DATABASES = "__all__"

#: The facility every in-process test syncs, and how many learners it has.
FACILITY_NAME = "Riverside School"
LEARNERS = 12

#: The server stages the plugin runs in jobs with both switches on, as
#: ``(direction, stage)`` pairs.
PULL_STAGES = frozenset({("pull", "serializing"), ("pull", "queuing")})
PUSH_STAGES = frozenset(
    {("push", "dequeuing"), ("push", "deserializing"), ("push", "cleanup")}
)

#: Both of the plugin's switches on: every server stage it can move runs in a job,
#: however small (the tests' syncs are small enough to run inline otherwise).
BACKGROUND_EVERYTHING = {
    "BACKGROUND_INITIALIZATION": True,
    "BACKGROUND_FINALIZATION": True,
    "INLINE_STAGE_RECORDS": 0,
}
