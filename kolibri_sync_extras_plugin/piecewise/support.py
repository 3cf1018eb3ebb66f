"""
Which morango versions the pieces follow: they run morango's own per-model steps,
private functions of morango |version|, so on any other version the plugin leaves
serializing and deserializing to morango's one-transaction stage.

.. |version| replace:: 0.8.15
"""

import morango

try:
    # the internals the pieces follow; older morango (Kolibri before 0.19) lacks
    # some, and is left to its own one-transaction stage
    from morango.errors import MorangoDirtyParent
    from morango.errors import MorangoMissingParent
    from morango.sync.operations import _begin_transaction
    from morango.sync.operations import _save_deserialized_record
    from morango.sync.operations import _self_referential_fk
    from morango.sync.operations import _validate_store_foreign_keys
except ImportError:
    MorangoDirtyParent = MorangoMissingParent = None
    _begin_transaction = _save_deserialized_record = None
    _self_referential_fk = _validate_store_foreign_keys = None
    _INTERNALS_FOUND = False
else:
    _INTERNALS_FOUND = True

__all__ = [
    "SUPPORTED_MORANGO_VERSIONS",
    "MorangoDirtyParent",
    "MorangoMissingParent",
    "_begin_transaction",
    "_save_deserialized_record",
    "_self_referential_fk",
    "_validate_store_foreign_keys",
    "supports_installed_morango",
]

#: The morango versions whose ``_serialize_into_store`` and ``_deserialize_from_store`` the pieces mirror.
SUPPORTED_MORANGO_VERSIONS = frozenset(("0.8.15",))


def supports_installed_morango():
    """
    :return: Whether the installed morango is one the pieces mirror
    :rtype: bool
    """
    return _INTERNALS_FOUND and morango.__version__ in SUPPORTED_MORANGO_VERSIONS
