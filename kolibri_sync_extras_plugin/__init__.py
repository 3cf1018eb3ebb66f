"""Background transfer stages for Kolibri facility syncs."""

__version__ = "0.1.0"
