"""Error hierarchy. The CLI maps each class to an exit code (see ``edgeft.cli``)."""

from __future__ import annotations


class EdgeftError(Exception):
    """Base class: every error edgeft raises on purpose. Messages name the file/field/row and the fix."""

    exit_code = 1


class ConfigError(EdgeftError):
    """A recipe, device profile or preset is invalid (unknown key, bad value, unknown name)."""

    exit_code = 2


class DataError(EdgeftError):
    """A dataset file is missing or has a malformed row."""

    exit_code = 3


class ModelSourceError(EdgeftError):
    """A model cannot be found or loaded from the given source."""

    exit_code = 4


class UnsupportedError(EdgeftError):
    """The requested feature or combination is not available; the message says what to do instead."""

    exit_code = 5


class ParityError(EdgeftError):
    """A stage's output differs from its input by more than the tolerance."""

    exit_code = 6


class BudgetError(EdgeftError):
    """A validation gate failed (accuracy, latency, size or memory budget)."""

    exit_code = 7


class VerifyError(EdgeftError):
    """A release bundle does not match its manifest."""

    exit_code = 8


class StageError(EdgeftError):
    """A pipeline stage cannot run (missing inputs from an earlier stage, interrupted output)."""

    exit_code = 9


def optional_import(module: str, need: str):
    """``import module`` (an optional dependency), or :class:`UnsupportedError` ``"<need> (<the ImportError>)"``:
    ``need`` says what needs it and how to install it."""
    import sys

    try:
        __import__(module)  # the import statement's hook, as `import module` would call it
    except ImportError as e:
        raise UnsupportedError(f"{need} ({e})") from e
    return sys.modules[module]
