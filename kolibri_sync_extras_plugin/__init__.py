"""Background transfer stages for Kolibri facility syncs."""

__version__ = "1.0.0"

try:
    # Django 1.11 (Kolibri 0.16) uses the plugin's AppConfig only when named here
    from .compat import default_app_config  # noqa: F401
except ImportError:
    # a newer Django finds it itself; setup.py imports this without Kolibri
    pass
