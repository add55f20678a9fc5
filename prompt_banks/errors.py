"""The one exception type that reaches a user as a one-line message and exit code 2, and the
one-line form of the environment errors (disk full, read-only folder) that reach the CLI."""

import errno


class UserError(Exception):
    """Bad input or environment the user can fix.

    The message is a single line that names the field (or file) and says how to fix it. The CLI
    prints it as ``error: <message>`` and exits with status 2; library callers can catch it.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        if "\n" in message:
            raise ValueError("UserError messages must be a single line")
        super().__init__(message)


# What to do about an environment error, by errno; anything else gets the generic advice.
_OS_FIXES = {
    errno.ENOSPC: "free disk space there (or point --home/--out elsewhere) and run again",
    errno.EDQUOT: "free space in your quota (or point --home/--out elsewhere) and run again",
    errno.EACCES: "choose a folder you can write (--out/--home) or fix its permissions",
    errno.EPERM: "choose a folder you can write (--out/--home) or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a writable folder (--out/--home)",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder; give a file path",
    errno.ENOENT: "check that the path exists",
}


def os_error_line(exc: OSError) -> str:
    """One line for an environment error that no caller turned into a `UserError`: the file,
    what the system said, and what to do."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or 0, "check the path, its permissions and free space")
    return " ".join(f"{where}: {reason}; {fix}".split())
