"""The ``squid`` command line."""
