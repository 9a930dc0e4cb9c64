"""The error type for problems the user can fix (bad flags, bad files, bad state on disk)."""

import argparse
import re
from typing import NoReturn

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UserError(ValueError):
    """A one-line, user-facing error: names the problem and what to do about it.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback
    (unless ``--debug``). Library callers get an ordinary ``ValueError``. Control characters
    in the message (a newline inside a file name or a CSV cell it quotes) are written as
    escapes (``\\n``), so the message stays one line whatever data it names.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(_CONTROL.sub(lambda m: repr(m.group())[1:-1], str(message)))


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are :class:`UserError`: one line, no usage dump.

    ``--help`` still prints everything. Sub-command parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        raise UserError(message)
