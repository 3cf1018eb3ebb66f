"""
The round trip the lab runs: a stock client pulls a server's facility, records new
activity of its own, and pushes it back.

Both the end-to-end tests and the demo run it, so what the demo reports is what
the tests check.
"""

from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from .dataset import COUNTED
from .dataset import count_records
from .dataset import generate_activity
from .jobs import wait_for_stage_jobs

__all__ = [
    "Credentials",
    "DEFAULT_CREDENTIALS",
    "RoundTrip",
    "all_at_once",
    "provision_server",
    "round_trip",
]

Credentials = namedtuple("Credentials", ("facility", "username", "password"))
#: The facility the lab provisions and the super user the client syncs as.
DEFAULT_CREDENTIALS = Credentials("Riverside School", "admin", "password")


def _silent(message):
    pass


def all_at_once(func, items):
    """
    Call ``func`` on every item at the same time, each in a thread of its own: many
    clients syncing at once, say.

    :return: The results, in the order of ``items``
    :rtype: list
    """
    items = list(items)
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(func, items))


def provision_server(
    server, records, credentials=DEFAULT_CREDENTIALS, seed=0, progress=_silent
):
    """
    Provision ``server`` with a new facility and about ``records`` records of
    learner activity in it.

    :type server: sync_lab.harness.instances.KolibriInstance
    :return: The facility, as :func:`~sync_lab.harness.dataset.facility_info`
        describes it, plus ``created``: what was generated
    :rtype: dict
    """
    progress("{}: provisioning facility {!r}".format(server.name, credentials.facility))
    facility = server.provision(
        credentials.facility, credentials.username, credentials.password
    )
    progress("{}: generating about {} records".format(server.name, records))
    facility["created"] = server.call(
        generate_activity, records=records, facility_id=facility["id"], seed=seed
    )
    return facility


class RoundTrip:
    """What happened in one :func:`round_trip`."""

    def __init__(self, facility):
        self.facility = facility
        #: The client's ``sync`` commands, as
        #: :class:`~sync_lab.harness.instances.CommandResult`
        self.pull = None
        self.push = None
        #: What the client generated between the pull and the push
        self.client_created = None
        #: ``{"server": {...}, "client": {...}}``, see
        #: :func:`~sync_lab.harness.dataset.count_records`
        self.counts = {}
        #: The server's stage jobs after the push, see
        #: :func:`~sync_lab.harness.jobs.stage_jobs`
        self.jobs = []

    @property
    def ok(self):
        """Whether both syncs exited 0. :rtype: bool"""
        return bool(self.pull and self.pull.ok and self.push and self.push.ok)

    def mismatched_counts(self):
        """
        :return: The kinds of record whose counts differ between server and client
        :rtype: list
        """
        server = self.counts.get("server", {})
        client = self.counts.get("client", {})
        return [kind for kind in COUNTED if server.get(kind) != client.get(kind)]

    @property
    def counts_match(self):
        """:rtype: bool"""
        return bool(self.counts) and not self.mismatched_counts()


def round_trip(
    server,
    client,
    facility,
    client_records,
    base_url=None,
    credentials=DEFAULT_CREDENTIALS,
    expected_jobs=(),
    job_timeout=60,
    sync_timeout=900,
    seed=1,
    progress=_silent,
    chunk_size=None,
):
    """
    Pull the facility from the running ``server`` to ``client``, create about
    ``client_records`` records on the client, push them, then wait for the server's
    background stage jobs (the client does not wait for cleanup) and count records
    on both sides.

    A failed sync ends the round trip early; the result says which one failed.

    :type server: sync_lab.harness.instances.KolibriInstance
    :type client: sync_lab.harness.instances.KolibriInstance
    :param facility: The server's facility, with at least its ``id``
    :param base_url: Where the client reaches the server (a proxy, say); the
        server's own address by default
    :param expected_jobs: ``(direction, stage)`` pairs the server should run in
        background jobs; they are waited for, for up to ``job_timeout`` seconds
    :param chunk_size: The client's ``--chunk-size``; Kolibri's default (200) if not given
    :rtype: RoundTrip
    """
    base_url = base_url or server.base_url
    outcome = RoundTrip(facility)
    sync_args = (base_url, facility["id"], credentials.username, credentials.password)

    progress("{}: pulling facility from {}".format(client.name, base_url))
    outcome.pull = client.sync(
        *sync_args,
        push=False,
        timeout=sync_timeout,
        check=False,
        chunk_size=chunk_size,
    )
    progress(
        "{}: pull exited {} after {:.1f}s".format(
            client.name, outcome.pull.returncode, outcome.pull.duration
        )
    )
    if not outcome.pull.ok:
        return outcome

    progress("{}: recording about {} new records".format(client.name, client_records))
    outcome.client_created = client.call(
        generate_activity,
        records=client_records,
        facility_id=facility["id"],
        prefix="client",
        seed=seed,
        existing_share=0.5,
    )

    progress("{}: pushing to {}".format(client.name, base_url))
    outcome.push = client.sync(
        *sync_args,
        pull=False,
        timeout=sync_timeout,
        check=False,
        chunk_size=chunk_size,
    )
    progress(
        "{}: push exited {} after {:.1f}s".format(
            client.name, outcome.push.returncode, outcome.push.duration
        )
    )

    if expected_jobs:
        progress("{}: waiting for background stage jobs".format(server.name))
    outcome.jobs = wait_for_stage_jobs(server, expected_jobs, timeout=job_timeout)
    progress("counting records on both sides")
    outcome.counts = {
        "server": server.call(count_records, facility_id=facility["id"]),
        "client": client.call(count_records, facility_id=facility["id"]),
    }
    return outcome
