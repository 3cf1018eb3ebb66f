"""
What the lab needs inside a server to test the bounds a server puts on its stage
jobs over HTTP: users of each role who can sign in through Kolibri's session API.

Every function here runs inside the server instance (see
:meth:`~sync_lab.harness.instances.KolibriInstance.call`).
"""

__all__ = ["create_users_of_each_role"]


def create_users_of_each_role(facility_id, password):
    """
    A learner, a coach and a facility admin of the facility, each with
    ``password``, so a test can sign in as them through Kolibri's session API.

    :return: The username of each, by role: ``learner``, ``coach``,
        ``facility admin``
    :rtype: dict
    """
    from kolibri.core.auth.constants import role_kinds
    from kolibri.core.auth.models import Facility
    from kolibri.core.auth.models import FacilityUser

    facility = Facility.objects.get(id=facility_id)
    roles = {
        "learner": None,
        "coach": role_kinds.COACH,
        "facility admin": role_kinds.ADMIN,
    }
    usernames = {}
    for who, role in roles.items():
        username = "bounds_" + who.replace(" ", "_")
        user = FacilityUser.objects.create_user(
            username, password=password, facility=facility
        )
        if role is not None:
            facility.add_role(user, role)
        usernames[who] = username
    return usernames
