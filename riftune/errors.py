"""The error type for problems the user can fix (bad flags, bad files, bad state on disk)."""


class UserError(ValueError):
    """A one-line, user-facing error: names the problem and what to do about it.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback
    (unless ``--debug``). Library callers get an ordinary ``ValueError``.
    """
