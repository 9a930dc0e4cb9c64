"""The error type for problems the user can fix (bad flags, bad files, bad state on disk)."""

import argparse
from typing import NoReturn


class UserError(ValueError):
    """A one-line, user-facing error: names the problem and what to do about it.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback
    (unless ``--debug``). Library callers get an ordinary ``ValueError``.
    """


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are :class:`UserError`: one line, no usage dump.

    ``--help`` still prints everything. Sub-command parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        raise UserError(message)
