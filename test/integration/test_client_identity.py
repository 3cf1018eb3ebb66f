"""
Who the caps count a client as: what its certificates prove, never the instance
id it claims.
"""

import uuid

import pytest
from kolibri.core.auth.models import FacilityUser

from kolibri_sync_extras_plugin.request.identity import client_identity
from kolibri_sync_extras_plugin.request.identity import client_key

from ..helpers.constants import ALL_DATABASES
from ..helpers.sync_sessions import device_certificate
from ..helpers.sync_sessions import issue_test_certificate
from ..helpers.sync_sessions import new_server_sync_session

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def learner(facility):
    return FacilityUser.objects.filter(facility=facility).first()


def test_device__counted_as_its_certificate_whatever_instance_id_it_claims(facility):
    certificate = device_certificate(facility)
    sessions = [
        new_server_sync_session(facility, uuid.uuid4().hex, certificate)
        for _ in range(2)
    ]

    assert {client_identity(s) for s in sessions} == {
        "certificate:{}".format(certificate.id)
    }


def test_two_devices_claiming_one_instance_id__counted_apart(facility):
    claimed = uuid.uuid4().hex
    first = new_server_sync_session(facility, claimed, device_certificate(facility))
    second = new_server_sync_session(facility, claimed, device_certificate(facility))

    assert client_key(first) != client_key(second)


def test_learner__every_certificate_of_theirs__counted_as_the_learner(
    facility, learner
):
    root = facility.dataset.get_root_certificate()
    own = issue_test_certificate(root, user_id=learner.id, keep_private_key=True)
    signed_below = issue_test_certificate(own, user_id=learner.id)
    another = issue_test_certificate(root, user_id=learner.id)

    identities = {
        client_identity(new_server_sync_session(facility, None, certificate))
        for certificate in (own, signed_below, another)
    }

    assert identities == {"user:{}:{}".format(facility.dataset_id, learner.id)}


def test_client_key__a_digest__names_neither_certificate_nor_user(facility, learner):
    certificate = issue_test_certificate(
        facility.dataset.get_root_certificate(), user_id=learner.id
    )

    key = client_key(new_server_sync_session(facility, None, certificate))

    assert learner.id not in key and certificate.id not in key
    assert len(key) == 32
