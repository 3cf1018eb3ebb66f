"""
How the lab compares two devices' facility data record by record, without
starting Kolibri: the digests here are written out by hand.
"""

import datetime
from types import SimpleNamespace

from sync_lab.harness.checks import _comparable
from sync_lab.harness.checks import compare_digests

LEARNER = {"id": "u1", "username": "ada", "full_name": "Ada Lovelace"}
LOG = {"id": "l1", "user_id": "u1", "progress": 0.5}


def _digest(learners=(LEARNER,), logs=(LOG,)):
    return {
        "records": {
            "facilityuser": {row["id"]: dict(row) for row in learners},
            "contentsummarylog": {row["id"]: dict(row) for row in logs},
        },
        "dirty": {},
        "dirty_count": 0,
    }


def test_compare_digests__same_records__no_difference():
    assert compare_digests(_digest(), _digest()) == (0, [])


def test_compare_digests__a_field_differs__names_the_record_and_both_values():
    renamed = dict(LEARNER, full_name="Ada Byron")

    differences = compare_digests(_digest(), _digest(learners=[renamed]))

    assert differences.count == 1
    [line] = differences.listed
    assert line.startswith("facilityuser u1: full_name")
    assert '"Ada Lovelace"' in line and '"Ada Byron"' in line


def test_compare_digests__records_on_one_side_only__each_counted():
    other = dict(LOG, id="l2")

    differences = compare_digests(
        _digest(logs=[LOG]), _digest(logs=[other]), names=("server", "client-3")
    )

    assert differences.count == 2
    assert sorted(differences.listed) == [
        "contentsummarylog l1: only on the server",
        "contentsummarylog l2: only on the client-3",
    ]


def test_compare_digests__limit__counts_all_lists_some():
    many = [dict(LOG, id="l{}".format(n)) for n in range(30)]

    differences = compare_digests(_digest(logs=many), _digest(logs=()), limit=5)

    assert (differences.count, len(differences.listed)) == (30, 5)


def test_comparable__json_text_and_aware_datetimes__the_same_whoever_wrote_them():
    json_field = SimpleNamespace(morango_serialize_to_string=True)
    utc = datetime.datetime(2026, 1, 2, 10, 0, tzinfo=datetime.timezone.utc)
    nairobi = utc.astimezone(datetime.timezone(datetime.timedelta(hours=3)))

    assert _comparable(json_field, '{"a": 1, "b": [2]}') == _comparable(
        json_field, '{"b": [2], "a": 1}'
    )
    assert _comparable(None, utc) == _comparable(None, nairobi)
    # a DateTimeTzField's text is not JSON: compared as it is
    assert _comparable(json_field, "2026-01-02 10:00:00.000000(UTC)") == (
        "2026-01-02 10:00:00.000000(UTC)"
    )
