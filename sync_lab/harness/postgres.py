"""
A throw-away PostgreSQL cluster for the lab, made by Debian's ``pg_virtualenv``
(postgresql-common): it creates a cluster in a temporary folder, starts it, runs
one command with the connection in ``PG*`` variables, and drops the cluster when
that command ends. As root it creates the cluster as the ``postgres`` user, so the
lab never switches users itself.

The command the lab runs inside prints the connection and then waits for its
standard input to close; :meth:`PostgresServer.stop` closes it, and
``pg_virtualenv`` stops and removes the cluster. A Kolibri instance uses a
database of the cluster through its ``[Database]`` options::

    with PostgresServer() as postgres:
        postgres.create_database("kolibri_server")
        server = KolibriInstance(
            "server", options=postgres.kolibri_options("kolibri_server")
        )

Databases are cheap to copy inside one cluster: provision Kolibri into one, then
give each test its own copy with ``create_database(name, template=...)``.
"""

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys

from .instances import LOCALHOST
from .instances import free_port

__all__ = ["PostgresError", "PostgresServer", "postgres_installed"]

#: The role Kolibri connects as; it owns the databases the lab creates.
KOLIBRI_ROLE = "kolibri"

# A lab database is thrown away: durability only costs time. The address has a
# trailing space because pg_createcluster writes a value that looks like a number
# unquoted, which 127.0.0.1 would be; PostgreSQL trims it.
_SETTINGS = (
    "listen_addresses={} ".format(LOCALHOST),
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
)

# run inside pg_virtualenv: print the connection, then hold the cluster until
# standard input closes
_HOLD = (
    "import json, os, sys; "
    "print(json.dumps({k: os.environ[k] for k in ('PGPORT', 'PGUSER', 'PGPASSWORD')}),"
    " flush=True); "
    "sys.stdin.read()"
)


class PostgresError(Exception):
    """The cluster could not be created, started or asked something."""


def postgres_installed():
    """
    :return: Whether ``pg_virtualenv`` and a PostgreSQL server are installed
    :rtype: bool
    """
    return bool(
        shutil.which("pg_virtualenv") and glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    )


class PostgresServer:
    """One ``pg_virtualenv`` cluster on 127.0.0.1, from its creation to its removal."""

    def __init__(self):
        self.process = None
        self.port = None
        self._superuser = None
        self.kolibri_password = secrets.token_hex(16)

    def __repr__(self):
        return "<PostgresServer port={}>".format(self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def start(self, timeout=120):
        """
        Create and start the cluster on a free port of 127.0.0.1.

        :rtype: PostgresServer
        :raises PostgresError: if ``pg_virtualenv`` is missing or fails
        """
        if not postgres_installed():
            raise PostgresError(
                "PostgreSQL is not installed: install the postgresql package "
                "(it brings pg_virtualenv from postgresql-common)"
            )
        command = ["pg_virtualenv", "-t"]
        for setting in _SETTINGS:
            command += ["-o", setting]
        self.process = subprocess.Popen(
            command + [sys.executable, "-c", _HOLD],
            cwd="/",
            env=dict(os.environ, PGPORT=str(free_port())),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        seen = []
        for line in self.process.stdout:
            seen.append(line)
            if line.startswith("{"):
                self._superuser = json.loads(line)
                break
        if self._superuser is None:
            self.process.wait(timeout=timeout)
            self.process = None
            raise PostgresError("pg_virtualenv failed:\n{}".format("".join(seen)))
        self.port = int(self._superuser["PGPORT"])
        self._execute(
            "CREATE ROLE {} LOGIN PASSWORD '{}'".format(
                KOLIBRI_ROLE, self.kolibri_password
            )
        )
        return self

    def stop(self, timeout=60):
        """
        End the command holding the cluster, by closing its input, so that
        ``pg_virtualenv`` stops and drops the cluster; SIGTERM it by its pid (it
        drops the cluster on that too) if it has not exited in ``timeout``.
        """
        process, self.process = self.process, None
        if process is None:
            return
        process.stdin.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
        process.stdout.close()

    def connect(self, database="postgres"):
        """
        A new connection as the cluster's super user, in autocommit mode (as
        ``CREATE DATABASE`` needs).

        :rtype: psycopg2.extensions.connection
        """
        import psycopg2

        connection = psycopg2.connect(
            host=LOCALHOST,
            port=self.port,
            user=self._superuser["PGUSER"],
            password=self._superuser["PGPASSWORD"],
            dbname=database,
            connect_timeout=5,
        )
        connection.autocommit = True
        return connection

    def _execute(self, sql):
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    def create_database(self, name, template=None):
        """
        Create a database that Kolibri's role owns, empty or as a copy of
        ``template`` (which nobody may be connected to).

        :param name: A plain identifier: letters, digits and underscores
        """
        _check_identifier(name)
        sql = "CREATE DATABASE {} OWNER {}".format(name, KOLIBRI_ROLE)
        if template is not None:
            _check_identifier(template)
            sql += " TEMPLATE {}".format(template)
        self._execute(sql)

    def kolibri_options(self, database):
        """
        The ``options.ini`` sections that point Kolibri at ``database``.

        :rtype: dict
        """
        return {
            "Database": {
                "DATABASE_ENGINE": "postgres",
                "DATABASE_NAME": database,
                "DATABASE_USER": KOLIBRI_ROLE,
                "DATABASE_PASSWORD": self.kolibri_password,
                "DATABASE_HOST": LOCALHOST,
                "DATABASE_PORT": self.port,
            }
        }


def _check_identifier(name):
    if not name.replace("_", "").isalnum() or not name.isascii() or name[0].isdigit():
        raise ValueError(
            "{!r} is not a plain identifier (letters, digits, underscores)".format(name)
        )
