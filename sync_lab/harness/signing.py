"""
Which RSA implementation morango signs and checks certificates with, inside an
instance (see :meth:`~sync_lab.harness.instances.KolibriInstance.call`).

morango uses ``cryptography`` when it can import it, and otherwise the pure-Python
``rsa`` package, which makes a key pair in seconds and signs in tens of
milliseconds. Kolibri's wheel carries builds of ``cryptography``, but on Linux
x86_64 it looks for them where they are not (``cext/abi3/Linux/x86_64`` beside
``cext/abi3/manyLinux/…``), so a Kolibri installed with pip there signs in pure
Python unless ``cryptography`` is installed beside it. Every client's session
set-up costs the server a signature and the client a key pair: the many-clients
report names which implementation its run used.
"""

__all__ = ["signing_backend"]

#: morango's key classes, by the implementation they use
_BACKENDS = {
    "CryptographyKey": "cryptography",
    "M2CryptoKey": "M2Crypto",
    "PythonRSAKey": "pure-Python rsa",
}


def signing_backend():
    """
    Inside an instance: the RSA implementation morango uses there.

    :rtype: str
    """
    from morango.models.fields import crypto

    name = crypto.Key.__name__
    return _BACKENDS.get(name, name)
