"""
Lab servers for the tests that run real Kolibri processes, made from the run's
template homes (see ``test/lab_fixtures.py``).
"""

import uuid

from sync_lab.instances import KolibriInstance

#: The databases a lab server can keep its data in, as :func:`new_server` names them.
DATABASES = ("postgresql", "sqlite")


def postgres_server(postgres, template, name, root, **kwargs):
    """
    A new server instance on a new copy of the template's database.

    :param template: The ``postgres_server_template`` fixture's value
    :param kwargs: As for :class:`~sync_lab.instances.KolibriInstance`
    :rtype: sync_lab.instances.KolibriInstance
    """
    home, template_database, _ = template
    database = "kolibri_{}".format(uuid.uuid4().hex[:12])
    postgres.create_database(database, template=template_database)
    options = dict(kwargs.pop("options", None) or {})
    options.update(postgres.kolibri_options(database))
    return KolibriInstance.copy_of(home, name, root=root, options=options, **kwargs)


def new_server(request, database, name, root, **kwargs):
    """
    A server instance, not started, from the run's template on ``database``.

    :param request: The asking fixture's ``request``, to reach the templates
    :param database: ``"sqlite"`` or ``"postgresql"``; the PostgreSQL tests are
        skipped when PostgreSQL is not installed
    :param kwargs: As for :class:`~sync_lab.instances.KolibriInstance`
    :return: The server and its facility
    :rtype: tuple
    """
    if database == "sqlite":
        template, facility = request.getfixturevalue("server_template")
        server = KolibriInstance.copy_of(template, name, root=root, **kwargs)
        return server, facility
    if database == "postgresql":
        template = request.getfixturevalue("postgres_server_template")
        postgres = request.getfixturevalue("postgres")
        return postgres_server(postgres, template, name, root, **kwargs), template[2]
    raise ValueError(
        "database {!r}: choose one of {}".format(database, ", ".join(DATABASES))
    )
