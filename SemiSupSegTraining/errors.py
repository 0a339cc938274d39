"""Errors that end a command with one sentence for the user instead of a traceback."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
#: Training was cancelled (SIGINT/SIGTERM) after writing a checkpoint; resume with ``--resume``.
EXIT_CANCELLED = 3


class InputError(Exception):
    """Bad user input: the message is one sentence naming the file, what is wrong and what to do."""


class Cancelled(Exception):
    """The user asked to stop (signal or cancel callback)."""
