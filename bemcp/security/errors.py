"""The errors of command security: a refused command, and settings that cannot be honoured."""


class PolicyError(Exception):
    """A command refused by the policy, or one that cannot run; the message says why."""


class ShellSyntaxError(PolicyError):
    """A command string holds shell syntax and the server runs commands without a shell."""

    def __init__(self, what, position):
        self.what = what
        self.position = position
        super().__init__(f"{what} at position {position}")


class PolicyConfigError(ValueError):
    """Settings that cannot be honoured together (raised when the server is built)."""
