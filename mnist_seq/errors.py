"""Errors a user can cause. Library code raises them; only the CLI prints them."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line (at most `limit` characters), or its type's name, for
    messages that quote what a library said."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else e.__class__.__name__


class MnistSeqError(Exception):
    """A problem the user can fix; shown as one line, exit code 1."""

    exit_code = 1


class ConfigError(MnistSeqError):
    """A bad config, override or command-line value (a usage error, exit code 2)."""

    exit_code = 2


class DataError(MnistSeqError):
    """Missing, unreadable or malformed data files."""


class RunDirError(MnistSeqError):
    """A run folder that cannot be created, or would overwrite an existing one."""


class WriteError(MnistSeqError):
    """A file could not be written (a full disk, no permission); `path` names it, `what`
    says which and why, and `hint` (added by whoever knows) what to do next."""

    def __init__(self, what: str, path=None, hint: str = ""):
        super().__init__(f"{what}; {hint}" if hint else what)
        self.what, self.path = what, path


class TrainingInterrupted(MnistSeqError):
    """Ctrl-C: the run stopped cleanly and can be resumed."""

    exit_code = 130


class TrainingDiverged(MnistSeqError):
    """The loss became NaN, infinite or absurdly large."""
