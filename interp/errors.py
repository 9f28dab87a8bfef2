"""User-facing errors.

Every mistake a user can make (a bad file, an unknown site, a model that is not installed) raises
an `InterpError` whose message is one line: what was wrong and what to do. The CLI prints that line
and exits non-zero without a traceback; Python callers can catch the class.
"""


class InterpError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ModelNotAvailableError(InterpError):
    """The requested model's files are not on this machine (nothing is ever downloaded)."""


class PromptSetError(InterpError):
    """A prompt set (JSONL file or generator arguments) cannot be used as asked."""


class RunFolderError(InterpError):
    """A run folder is missing, malformed, or written by a newer schema."""
