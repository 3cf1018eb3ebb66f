"""
morango's own parts of a stage, as its server controller uses them: the
operations it invokes for a stage (morango's and every Kolibri sync hook's) and
the signals it fires around them.
"""

__all__ = ["stage_middleware", "stage_signal"]


def stage_middleware(stage):
    """
    :return: morango's operations for ``stage``, as the controller would invoke them
    :rtype: morango.registry.SessionMiddlewareOperations
    """
    from morango.registry import session_middleware

    return next(m for m in session_middleware if m.related_stage == stage)


def stage_signal(stage):
    """
    :return: The signal group morango's server controller fires for ``stage``, which
        Kolibri listens to (cleanup's ``completed`` runs its post-transfer hooks)
    """
    from morango.api.viewsets import session_controller

    return getattr(session_controller.signals, stage)
