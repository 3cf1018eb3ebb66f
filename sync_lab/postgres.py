"""
A throw-away PostgreSQL server for the lab: a new cluster in a temporary folder,
listening on a free port of 127.0.0.1 only, stopped by its own pid.

PostgreSQL refuses to run as root, so when the lab runs as root the cluster belongs
to the ``postgres`` system user that the distribution's package creates, and every
PostgreSQL program runs as that user; otherwise it runs as the lab's own user.

A Kolibri instance uses a database of the cluster through its ``[Database]``
options::

    with PostgresServer() as postgres:
        postgres.create_database("kolibri_server")
        server = KolibriInstance(
            "server", options=postgres.kolibri_options("kolibri_server")
        )

Databases are cheap to copy inside one cluster: provision Kolibri into one, then
give each test its own copy with ``create_database(name, template=...)``.
"""

import atexit
import glob
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .instances import LOCALHOST
from .instances import free_port

logger = logging.getLogger(__name__)

__all__ = [
    "BINDIR_ENV",
    "PostgresError",
    "PostgresServer",
    "find_bindir",
]

#: Where ``initdb`` and ``postgres`` are, if not found on their own.
BINDIR_ENV = "SYNC_LAB_PG_BINDIR"
#: The system user a cluster belongs to when the lab runs as root.
SYSTEM_USER = "postgres"
#: The cluster's super user, and the role Kolibri connects as.
SUPERUSER = "sync_lab"
KOLIBRI_ROLE = "kolibri"

# a lab database is thrown away: durability only costs time
_SERVER_SETTINGS = {
    "listen_addresses": LOCALHOST,
    # TCP only: no socket file in a folder this user may not write to
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

# clusters still running when the interpreter exits are stopped, whatever failed
_running = set()


class PostgresError(Exception):
    """The cluster could not be created, started or asked something."""


def find_bindir():
    """
    The folder holding PostgreSQL's server programs: ``$SYNC_LAB_PG_BINDIR``, the
    folder of an ``initdb`` on the ``PATH``, or the newest Debian or Ubuntu install.

    :return: The folder, or ``None`` if PostgreSQL is not installed
    :rtype: str|None
    """
    candidates = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(os.environ[BINDIR_ENV])
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    candidates.extend(
        sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda path: _version_key(path.split("/")[-2]),
            reverse=True,
        )
    )
    for bindir in candidates:
        if all(
            os.access(os.path.join(bindir, name), os.X_OK)
            for name in ("initdb", "postgres")
        ):
            return bindir
    return None


def _version_key(text):
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class PostgresServer(object):
    """One PostgreSQL cluster, from ``initdb`` to its removal."""

    def __init__(self, bindir=None, root=None):
        """
        :param bindir: Where PostgreSQL's programs are; see :func:`find_bindir`
        :param root: Where to create the cluster's folder; the system's temporary
            folder by default, which, unlike a pytest folder, the ``postgres``
            user can reach
        """
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise PostgresError(
                "PostgreSQL is not installed: no initdb and postgres found on the PATH, "
                "in /usr/lib/postgresql/*/bin or in ${}".format(BINDIR_ENV)
            )
        self.root = root
        self.base = None
        self.port = None
        self.process = None
        self.password = secrets.token_hex(16)
        self.kolibri_password = secrets.token_hex(16)
        self._log = None

    def __repr__(self):
        return "<PostgresServer port={} base={}>".format(self.port, self.base)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.cleanup()

    @property
    def data_dir(self):
        return self.base / "data"

    @property
    def log_path(self):
        return self.base / "postgres.log"

    # -- running as the cluster's owner ----------------------------------------

    def _owner(self):
        """
        :return: The ``pwd`` entry programs run as, or ``None`` for this user
        """
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresError(
                "running as root, and there is no {!r} user to own the cluster: "
                "install PostgreSQL from the distribution, or run as another "
                "user".format(SYSTEM_USER)
            )

    def _as_owner(self):
        owner = self._owner()
        if owner is None:
            return {}
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def _env(self):
        owner = self._owner()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        env["HOME"] = str(self.base) if owner is None else owner.pw_dir
        return env

    def _program(self, name):
        return os.path.join(self.bindir, name)

    # -- life cycle -------------------------------------------------------------

    def start(self, timeout=60):
        """
        Create the cluster and start its server on a free port of 127.0.0.1.

        :rtype: PostgresServer
        :raises PostgresError: if ``initdb`` fails or the server does not answer
        """
        if self.process is not None:
            return self
        self.base = Path(tempfile.mkdtemp(prefix="sync-lab-pg-", dir=self.root))
        owner = self._owner()
        if owner is not None:
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        password_file = self.base / "superuser-password"
        password_file.write_text(self.password + "\n")
        if owner is not None:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        initdb = subprocess.run(
            [
                self._program("initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-locale",
            ],
            cwd=str(self.base),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            **self._as_owner(),
        )
        password_file.unlink()
        if initdb.returncode != 0:
            raise PostgresError("initdb failed:\n{}".format(initdb.stdout))
        self._spawn(timeout)
        self._execute(
            "CREATE ROLE {} LOGIN PASSWORD '{}'".format(
                KOLIBRI_ROLE, self.kolibri_password
            )
        )
        return self

    def _spawn(self, timeout):
        settings = []
        for key, value in _SERVER_SETTINGS.items():
            settings += ["-c", "{}={}".format(key, value)]
        for attempt in range(3):
            self.port = free_port()
            self._log = open(self.log_path, "a")
            self.process = subprocess.Popen(
                [self._program("postgres"), "-D", str(self.data_dir)]
                + ["-p", str(self.port)]
                + settings,
                cwd=str(self.base),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_owner(),
            )
            _running.add(self)
            try:
                self._wait_until_ready(timeout)
                logger.debug("postgres pid %s on port %s", self.process.pid, self.port)
                return
            except PostgresError:
                # another process may have taken the port first: try a new one
                self.stop()
                if attempt == 2:
                    raise

    def _wait_until_ready(self, timeout):
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PostgresError(
                    "postgres exited with {}; log:\n{}".format(
                        self.process.returncode, self.log_tail()
                    )
                )
            try:
                self.connect().close()
                return
            except psycopg2.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise PostgresError(
                    "postgres did not answer within {}s; log:\n{}".format(
                        timeout, self.log_tail()
                    )
                )
            time.sleep(0.2)

    def log_tail(self, lines=30):
        """:rtype: str"""
        try:
            with open(self.log_path, errors="replace") as log:
                return "\n".join(log.read().splitlines()[-lines:])
        except (FileNotFoundError, TypeError):
            return ""

    def stop(self, timeout=30):
        """
        Stop the server by its own pid: SIGINT is PostgreSQL's fast shutdown, which
        ends the sessions still open; SIGKILL if it has not exited in ``timeout``.
        """
        process, self.process = self.process, None
        _running.discard(self)
        if process is not None and process.poll() is None:
            import signal

            try:
                os.kill(process.pid, signal.SIGINT)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "postgres pid %s ignored SIGINT: killing it", process.pid
                )
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self):
        """Stop the server and remove the cluster."""
        try:
            self.stop()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    # -- databases --------------------------------------------------------------

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
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            connect_timeout=5,
        )
        connection.autocommit = True
        return connection

    def _execute(self, sql, params=None, database="postgres"):
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if cursor.description is not None:
                    return cursor.fetchall()
                return None
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

    def drop_database(self, name):
        """Drop a database, ending the sessions still connected to it."""
        _check_identifier(name)
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)".format(name))

    def query(self, database, sql, params=None):
        """
        Run one statement in ``database`` as the super user.

        :return: The rows, for a statement that returns any
        :rtype: list|None
        """
        return self._execute(sql, params, database=database)

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


@atexit.register
def _stop_running_servers():
    for server in list(_running):
        server.cleanup()
