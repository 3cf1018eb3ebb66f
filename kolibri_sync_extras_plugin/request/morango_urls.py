"""
Which morango endpoint a request is for, read from its WSGI environ before
Django routes it: the request hooks run on ``request_started``, ahead of the view.
"""

__all__ = ["morango_endpoint"]

#: The morango endpoints the request hooks look at, by the text their path holds
_PATH_MARKERS = {
    "transfersessions-detail": "/transfersessions/",
    "buffers-list": "/buffers/",
}


def morango_endpoint(environ, method, url_name):
    """
    :param environ: The request's WSGI environ
    :param method: The HTTP method the request must have
    :param url_name: The morango URL name to match (a key of ``_PATH_MARKERS``)
    :return: The URL's keyword arguments if the request is a ``method`` request
        for that endpoint, else ``None``. Anyone on the network can send any path;
        one that does not resolve is not ours to answer.
    :rtype: dict|None
    """
    from django.urls import Resolver404
    from django.urls import resolve

    environ = environ or {}
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") != method or _PATH_MARKERS[url_name] not in path:
        return None
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return match.kwargs if match.url_name == url_name else None
