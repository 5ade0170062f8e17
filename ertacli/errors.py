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


class PlanMismatch(UserError, ValueError):
    """A plan used with a model, step count, shape or scheduler other than the one it was calibrated on."""


def require_same(what: str, field: str, recorded, actual, redo: str, error: type = UserError) -> None:
    """The one same-settings check: `what` was made with `field` = recorded, this run has actual -> one line."""
    if recorded != actual:
        raise error(f"{what} was made with {field} {recorded}, this run has {actual}: {redo}")
