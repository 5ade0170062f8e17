"""User-facing errors: one line that names the field or file and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A one-line user-facing error; the CLI prints it styled and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        """The single-line message."""
        return str(self)
