"""The one exception type the command line turns into a readable message instead of a traceback, and the one place
that does it for every command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class MedftError(Exception):
    """Bad input or an unusable environment: the message names the problem and the fix."""

    exit_code = 2


@contextmanager
def exit_on_error() -> Iterator[None]:
    """For a command's `main`: a MedftError becomes `error: <message>` on stderr and its exit code."""
    try:
        yield
    except MedftError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
