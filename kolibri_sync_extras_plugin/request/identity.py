"""
Who a sync client is, as far as the server can prove it: what the caps on stage
jobs count by.

morango records the client's instance id from the ``instance`` JSON the client
sends when it opens a sync session; no signature covers it, so a client may send
a fresh one with every sync session, or another device's. What morango does check
is the client's certificate: the client signs the session's nonce with its
private key and the certificate's chain is verified up to a root this server
holds. So a client is counted by its certificates:

- a chain that names a facility user in its scope (a learner's single-user
  certificate, and any certificate its holder signs below it) counts as that
  user, however many certificates the user asks for or signs;
- any other chain (a device's full-facility certificate) counts as the client's
  own certificate, whose private key the client proved it holds.

A holder of a full-facility certificate can sign certificates below it and so
count as many clients; such a holder has the facility's keys (it may rewrite the
facility's data), and ``MAX_STAGE_JOBS`` bounds all clients together.

Job storage keeps only a digest of the identity: the job's metadata is shown by
Kolibri's tasks API (see :mod:`.enqueue`).
"""

import functools
import hashlib
import json

__all__ = ["CLIENT_METADATA_KEY", "client_identity", "client_key"]

#: The key of a stage job's metadata holding its client's :func:`client_key`.
CLIENT_METADATA_KEY = "client"

_USER_PARAM = "user_id"
_DATASET_PARAM = "dataset_id"


def _scope_params(certificate):
    try:
        params = json.loads(certificate.scope_params or "{}")
    except (TypeError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def _chain_from_root(certificate):
    chain = []
    while certificate is not None:
        chain.append(certificate)
        certificate = certificate.parent
    return reversed(chain)


def client_identity(sync_session):
    """
    The identity the server can prove of the client of a sync session.

    :type sync_session: morango.models.core.SyncSession
    :return: ``"user:<dataset id>:<user id>"`` for a chain that names a facility
        user, else ``"certificate:<certificate id>"``; ``"unknown"`` for a session
        with no client certificate
    :rtype: str
    """
    if sync_session.client_certificate_id is None:
        return "unknown"
    return _identity_of_certificate(sync_session.client_certificate_id)


@functools.lru_cache(maxsize=1024)
def _identity_of_certificate(certificate_id):
    """
    A certificate's id is a hash of its content, so what its chain proves never
    changes: each stage request of a client asks again, the chain is read once.
    """
    from morango.models.certificates import Certificate

    certificate = Certificate.objects.get(id=certificate_id)
    # the user named nearest the root: certificates signed below it narrow its
    # scope and cannot name another user's data
    for link in _chain_from_root(certificate):
        params = _scope_params(link)
        if params.get(_USER_PARAM):
            return "user:{}:{}".format(
                params.get(_DATASET_PARAM, ""), params[_USER_PARAM]
            )
    return "certificate:{}".format(certificate.id)


def client_key(sync_session):
    """
    :type sync_session: morango.models.core.SyncSession
    :return: A digest of :func:`client_identity`, to keep in job storage
    :rtype: str
    """
    identity = client_identity(sync_session).encode("utf-8")
    return hashlib.sha256(identity).hexdigest()[:32]
