"""One error hierarchy for the merging package.

Each error also subclasses the builtin that callers already catch, so an
``except ValueError`` written before these existed keeps working.
"""

from __future__ import annotations


class MergeError(Exception):
    """Base class of every error raised on purpose by `merging`."""


class RecipeError(MergeError, ValueError):
    """The recipe is malformed: unknown key, unknown method, value out of range."""


class RegistryError(MergeError, KeyError):
    """A name is unknown to a registry, or registered twice."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class IncompatibleModelsError(MergeError, ValueError):
    """Sources cannot be merged: architectures, tensor names, shapes or vocabularies differ."""


class ShapeMismatchError(IncompatibleModelsError):
    """A tensor has different shapes across sources (the message names it and both shapes)."""


class VocabMismatchError(IncompatibleModelsError):
    """Embedding / LM-head rows differ because the vocabularies differ."""


class CheckpointError(MergeError, OSError):
    """A checkpoint cannot be read: missing files, corrupt headers, refused pickle."""


class UnsafeCheckpointError(CheckpointError):
    """Only pickle (`.bin`) weights exist and the recipe did not opt in to loading them."""


class OutputError(MergeError, OSError):
    """The output cannot be written: destination exists, not writable, disk full."""


class HubError(MergeError):
    """A Hub request failed; the message says what to do about it (never contains a token)."""


class AdapterError(MergeError, ValueError):
    """A LoRA adapter is unsupported (DoRA, bias, non-LoRA type) or does not fit the base."""


class MergeCancelled(MergeError):
    """The merge was cancelled by its caller; nothing was left at the destination."""


class AlignmentError(MergeError, ValueError):
    """Alignment cannot run (unsupported architecture, mismatched shapes) or it changed the
    function (the check failed; nothing was written)."""


class AuthError(HubError, PermissionError):
    """The Hub refused the token: missing, invalid, or without access to the repo."""


class GatedRepoAccessError(AuthError):
    """The repo is gated and this account has not accepted its conditions on the Hub page."""


class NotFoundError(HubError, LookupError):
    """A repo, revision or file does not exist on the Hub (or is private and not visible)."""


class RepoExistsError(HubError, FileExistsError):
    """The destination repo already exists and overwriting it was not requested."""
