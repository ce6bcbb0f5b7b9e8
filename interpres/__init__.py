"""interpres: the command-line interface (argument parsing and dispatch only)."""

__version__ = "0.1.0"
