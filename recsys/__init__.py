"""The ``recsys`` command line and the settings shared by every part of the system."""
