"""
Queries on morango's store that the plugin's operations and progress share.
"""

from django.db.models import Q
from morango.models.core import Store

__all__ = ["under_filter", "dirty_store_records", "undeserialized_records"]


def under_filter(sync_filter, field="partition"):
    """
    :type sync_filter: morango.models.certificates.Filter
    :param field: The partition field: ``partition`` on store records,
        ``_morango_partition`` on app rows
    :return: A condition matching rows in any of the filter's partitions
    :rtype: django.db.models.Q
    """
    condition = Q()
    for prefix in sync_filter:
        condition |= Q(**{field + "__startswith": prefix})
    return condition


def dirty_store_records(sync_filter):
    """
    :return: Store records within ``sync_filter`` that wait to be deserialized or
        failed to be (morango keeps the dirty bit of a record it could not apply)
    :rtype: django.db.models.QuerySet
    """
    return Store.objects.filter(under_filter(sync_filter), dirty_bit=True)


def undeserialized_records(sync_filter):
    """
    :return: Store records within ``sync_filter`` that were received but never
        deserialized: dirty, and without a recorded deserialization error
    :rtype: django.db.models.QuerySet
    """
    no_error = Q(deserialization_error__isnull=True) | Q(deserialization_error="")
    return dirty_store_records(sync_filter).filter(no_error)
