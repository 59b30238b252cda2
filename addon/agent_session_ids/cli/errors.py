"""The one error every command says in one line. Imports nothing: the status line, which runs
after every answer of Claude Code, starts from the command table and needs only this."""


class CliError(Exception):
    """One line for the user: what is wrong and how to fix it; the command exits non-zero. It is
    said after `prog: ` (the parser's own name for a subcommand's usage error)."""

    def __init__(self, message: object = "", prog: str = "agent-session-ids") -> None:
        super().__init__(message)
        self.prog = prog
