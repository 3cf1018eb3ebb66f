"""Background transfer stages for Kolibri facility syncs."""

__version__ = "1.0.0"
