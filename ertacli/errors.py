"""User-facing errors: one line that names the field or file and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A one-line user-facing error; the CLI prints it styled and exits with code 2."""

    exit_code = 2
    MAX_CHARS = 600  # a message quoting a huge value is cut in the middle, never megabytes long

    def __init__(self, message: str) -> None:
        text = " ".join(str(message)[:100_000].split())
        if len(text) > self.MAX_CHARS:
            half = self.MAX_CHARS // 2 - 3
            text = f"{text[:half]} ... {text[-half:]}"
        super().__init__(text)

    @property
    def message(self) -> str:
        """The single-line message."""
        return str(self)


class PlanMismatch(UserError, ValueError):
    """A plan used with a model, step count, shape or scheduler other than the one it was calibrated on."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) during a command: raised by the CLI's handler, past click's own KeyboardInterrupt handling."""


def require_same(what: str, field: str, recorded, actual, redo: str, error: type = UserError) -> None:
    """The one same-settings check: `what` was made with `field` = recorded, this run has actual -> one line."""
    if recorded != actual:
        raise error(f"{what} was made with {field} {recorded}, this run has {actual}: {redo}")


def out_of_memory(exc: BaseException) -> str:
    """One line for an allocation that failed (host MemoryError, torch's CPU allocator or CUDA out of memory)."""
    what = " ".join(str(exc).split())[:160] or type(exc).__name__
    return UserError(f"out of memory ({what}); lower sampling.height/width/frames, the number of prompts x seeds or "
                     f"calibration.micro_batch, or use a device with more memory").message


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what failed, on which file, and the fix."""
    import errno

    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None) or "a file"
    fix = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk space (quota)",
           errno.EACCES: "check the folder's permissions or set ERTACACHE_RESULTS to a writable folder",
           errno.EROFS: "the file system is read-only: set ERTACACHE_RESULTS to a writable folder",
           errno.EPERM: "check the folder's permissions"}.get(exc.errno, "check the path")
    return UserError(f"{exc.strerror or type(exc).__name__}: {where}; {fix}").message
