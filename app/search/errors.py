"""Errors of the merge search (part of the `MergeError` hierarchy, so the CLI and the app show
them as user errors)."""

from __future__ import annotations

from merging.errors import MergeError


class SearchError(MergeError, ValueError):
    """The search cannot run: nothing to search in the recipe, no examples, a missing backend,
    or the winner's streamed merge does not reproduce its in-memory score."""


class BackendUnavailableError(SearchError, ImportError):
    """The requested backend needs an optional dependency (``pip install 'hubmerge[ray]'``)."""
