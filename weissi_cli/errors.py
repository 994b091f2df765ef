"""The exception hierarchy: every error weissi expects carries its exit code."""

from __future__ import annotations


class WeissiError(Exception):
    """An error weissi anticipated; the message names the file/tensor and what to do."""

    exit_code: int = 2


class UsageError(WeissiError):
    """Options that contradict each other or cannot be honoured."""


class InputError(WeissiError):
    """A checkpoint or spec file that cannot be read or is malformed."""


class UnsafePickleError(InputError):
    """A torch pickle that `weights_only` loading refuses: nothing in it was run."""


class StructureError(WeissiError):
    """The structure cannot be established (unknown spec layer, shape mismatch, ...)."""


class ConsentError(WeissiError):
    """An action on assumed structure that needs the user's explicit consent."""


class OutputError(WeissiError):
    """The output cannot be written (exists, equals the input, disk error, ...)."""


class VerificationError(WeissiError):
    """A written checkpoint does not compute the same function as its input."""

    exit_code = 1
