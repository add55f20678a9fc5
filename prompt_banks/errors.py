"""The one exception type that reaches a user as a one-line message and exit code 2."""


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
