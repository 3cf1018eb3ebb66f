"""
The homes every run starts from, made once and copied: provisioning a server and
generating its data takes tens of seconds, copying a home a fraction of one.

:class:`Templates` holds a provisioned server home per database, each with the
same facility and generated learner activity, and a migrated, unprovisioned client
home (a fresh device about to pull its facility); each is made when first asked
for. Every run starts from copies of them (:meth:`Templates.new_server`, on
PostgreSQL with a copy of the template's database as well, and
:meth:`Templates.new_client`), so that runs sync the same data from scratch. The
demo, its many-clients mode and the test suite's session fixtures all use it.
"""

import contextlib
import uuid

from .instances import KolibriInstance
from .scenario import provision_server

__all__ = ["DATABASES", "Templates"]

#: The databases a server can keep its data in.
DATABASES = ("sqlite", "postgresql")


def _silent(message):
    pass


class Templates:
    """
    Template homes under ``workdir``, and copies of them for each run.

    Typical use::

        with Templates(workdir, records=2000) as templates:
            server, facility = templates.new_server("sqlite", "server", plugin=True)
            client = templates.new_client("client")
            with server, client:
                ...

    Leaving the ``with`` block (or :meth:`cleanup`) removes the template homes and
    stops the PostgreSQL cluster the templates started, if any; each copy is its
    own :class:`~sync_lab.harness.instances.KolibriInstance` to clean up.
    """

    def __init__(
        self,
        workdir,
        records,
        seed=0,
        plugin=False,
        progress=_silent,
        keep=None,
        python=None,
        postgres=None,
        label="",
    ):
        """
        :param workdir: Where the template homes, and by default their copies, go
        :param records: About how many records of learner activity each server
            template's facility holds
        :param seed: Seed for the generated data
        :param plugin: Whether the plugin is enabled in the server templates; a
            copy enables or disables it as its ``plugin`` argument asks
        :param progress: Called with a line of text at each step
        :param keep: ``keep_home`` of the templates and their copies; ``None``
            leaves it to :class:`~sync_lab.harness.instances.KolibriInstance`
        :param python: The interpreter, so the Kolibri line, of the templates and
            their copies; this one by default. A home belongs to the line that
            migrated it.
        :param postgres: The :class:`~sync_lab.harness.postgres.PostgresServer`
            to keep the PostgreSQL templates in, or a callable returning it; by
            default a throw-away cluster is started when first needed
        :param label: Added to the template homes' names, e.g. a Kolibri line
        """
        self.workdir = workdir
        self.records = records
        self.seed = seed
        self.plugin = plugin
        self.progress = progress
        self.keep = keep
        self.python = python
        self.label = label
        self._postgres = postgres
        self._servers = {}
        self._client = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.cleanup()

    # -- the templates ------------------------------------------------------------

    @property
    def postgres(self):
        """
        The PostgreSQL cluster of the PostgreSQL templates, started or asked for
        when first needed.

        :rtype: sync_lab.harness.postgres.PostgresServer
        """
        if self._postgres is None:
            from .postgres import PostgresServer

            self.progress("starting a throw-away PostgreSQL cluster")
            self._postgres = self._stack.enter_context(PostgresServer())
        elif callable(self._postgres):
            self._postgres = self._postgres()
        return self._postgres

    def server(self, database="sqlite"):
        """
        The template server home for ``database``, provisioned with a facility and
        about :attr:`records` records of activity; never started.

        :param database: One of :data:`DATABASES`
        :return: The home, its facility (as
            :func:`~sync_lab.harness.scenario.provision_server` returns it) and, on
            PostgreSQL, its template database (else ``None``)
        :rtype: tuple
        """
        if database not in DATABASES:
            raise ValueError(
                "database {!r}: choose one of {}".format(database, ", ".join(DATABASES))
            )
        if database not in self._servers:
            self._servers[database] = self._provision(database)
        return self._servers[database]

    def _provision(self, database):
        options = {}
        template_database = None
        if database == "postgresql":
            template_database = "kolibri_template_{}".format(uuid.uuid4().hex[:8])
            self.postgres.create_database(template_database)
            options = self.postgres.kolibri_options(template_database)
        home = self._stack.enter_context(
            KolibriInstance(
                "server-template-{}{}".format(database, self.label),
                root=self.workdir,
                plugin=self.plugin,
                options=options,
                keep_home=self.keep,
                python=self.python,
            )
        )
        facility = provision_server(
            home, self.records, seed=self.seed, progress=self.progress
        )
        return home, facility, template_database

    def client(self):
        """
        The template client home: migrated, unprovisioned, never started.

        :rtype: sync_lab.harness.instances.KolibriInstance
        """
        if self._client is None:
            client = self._stack.enter_context(
                KolibriInstance(
                    "client-template{}".format(self.label),
                    root=self.workdir,
                    keep_home=self.keep,
                    python=self.python,
                )
            )
            self.progress(
                "{}: creating an empty, unprovisioned home".format(client.name)
            )
            client.migrate()
            self._client = client
        return self._client

    # -- copies for a run ---------------------------------------------------------

    def new_server(
        self, database, name, root=None, instance_class=KolibriInstance, **kwargs
    ):
        """
        A new server instance, not started, whose home is a copy of the template
        for ``database`` (made now if it was not yet); on PostgreSQL its database
        is a new copy of the template's.

        :param root: Where to create its home; :attr:`workdir` by default
        :param instance_class: :class:`~sync_lab.harness.instances.KolibriInstance`
            or a subclass, e.g. :class:`~sync_lab.harness.split.SplitKolibriInstance`
        :param kwargs: As for :class:`~sync_lab.harness.instances.KolibriInstance`
            (``plugin``, ``sync_options``, ``options``, ...); the database's
            options are added to ``options``
        :return: The server and its facility
        :rtype: tuple
        """
        home, facility, template_database = self.server(database)
        if template_database is not None:
            copy = "kolibri_{}".format(uuid.uuid4().hex[:12])
            self.postgres.create_database(copy, template=template_database)
            options = dict(kwargs.pop("options", None) or {})
            options.update(self.postgres.kolibri_options(copy))
            kwargs["options"] = options
        server = instance_class.copy_of(home, name, **self._copy_kwargs(root, kwargs))
        return server, facility

    def new_client(self, name, root=None, **kwargs):
        """
        A new client instance whose home is a copy of the template client's: a
        device of its own that has never synced.

        :param root: Where to create its home; :attr:`workdir` by default
        :param kwargs: As for :class:`~sync_lab.harness.instances.KolibriInstance`
        :rtype: sync_lab.harness.instances.KolibriInstance
        """
        return KolibriInstance.copy_of(
            self.client(), name, **self._copy_kwargs(root, kwargs)
        )

    def _copy_kwargs(self, root, kwargs):
        kwargs = dict(kwargs)
        kwargs["root"] = self.workdir if root is None else root
        kwargs.setdefault("keep_home", self.keep)
        kwargs.setdefault("python", self.python)
        return kwargs

    def cleanup(self):
        """Remove the template homes, and stop the cluster started for them."""
        self._stack.close()
