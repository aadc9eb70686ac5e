"""The one exception type users see: the CLI prints its message as one line and exits non-zero."""


class RobustferError(Exception):
    """A problem with the user's input or environment; the message says what, where, and the fix."""
