"""Handlers of the Models and Method tabs: Hub search, the recipe form <-> YAML, the check.

`Handlers` (`app.handlers`) inherits these; they need only ``self.settings``.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from app import forms, workflows
from app.handler_support import _token, user_errors, user_facing
from app.settings import Settings
from merging.errors import MergeError

logger = logging.getLogger("app.handlers")


class RecipeHandlers:
    """Model search, the recipe form and the compatibility check."""

    settings: Settings

    def search_models(self, query: str, token: str | None = None) -> list[dict[str, Any]]:
        """Search the Hub for models to merge (up to 20 hits, most downloaded first).

        Args:
            query: words of the model ids to find, e.g. `llama 1b instruct` or `tiny`.
            token: a Hub token, needed only to see private or gated models (blank: anonymous).

        Returns:
            one dict per model: `id`, `architecture`, `parameters`, `dtype`, `is_adapter`, ….
        """
        from merging.hub import search_models

        with user_facing():
            hits = search_models(
                query or "", limit=20, token=_token(token, None),
                endpoint=self.settings.hub_endpoint,
            )  # fmt: skip
        return [hit.model_dump(mode="json") for hit in hits]

    def suggest(self, query: str) -> Any:
        """Type-ahead: refresh a dropdown's choices from a Hub search (never raises)."""
        query = (query or "").strip()
        try:
            ids = [hit["id"] for hit in self.search_models(query)] if len(query) >= 2 else []
        except gr.Error:
            ids = []
        return gr.update(choices=list(dict.fromkeys([*ids, *([query] if query else [])])))

    def on_key_up(self, data: gr.KeyUpData) -> Any:
        return self.suggest(data.input_value)

    def add_model(self, rows: Any, model: str | None) -> list[list[Any]]:
        rows = forms._as_rows(rows)
        rows = [r for r in rows if r and not forms._blank(r[0])]
        model = (model or "").strip()
        if not model:
            raise gr.Error("Pick or type a model id (or a local folder) to add.")
        width = len(forms.source_columns())
        rows.append([model, 1.0, *([None] * (width - 2))])
        return rows

    def form_to_yaml(self, current: str, method: str, base: str, rows: Any, *values: Any) -> str:
        if forms.has_slices(current):  # the form cannot show slices: never overwrite them
            gr.Warning("This recipe uses slices:, which the form cannot show; edit the YAML.")
            return current
        return forms.form_to_yaml(current, method, base, rows, list(values))

    def yaml_to_form(self, text: str) -> list[Any]:
        """Fill the form from pasted YAML; leaves the form alone while the YAML is invalid."""
        count = 3 + len(forms.param_fields())
        try:
            form = forms.yaml_to_form(text, soup=forms.is_soup(text))
        except (MergeError, ValueError):
            return [gr.update()] * count
        return [form.method, form.base, form.rows, *form.values]

    def method_changed(self, method: str) -> list[Any]:
        """Show the chosen method's inputs and description."""
        engine = forms.engine_method(method)
        groups = [gr.update(visible=(name == engine)) for name in forms.METHODS.names()]
        return [forms.method_info(method), gr.update(visible=method == forms.GREEDY_SOUP),
                *groups]  # fmt: skip

    def preview_check(
        self, recipe: str, token: str | None, oauth_token: gr.OAuthToken | None = None
    ) -> str:
        """The header-only compatibility report, for the live preview (never raises)."""
        try:
            return self._check(recipe, _token(token, oauth_token))
        except Exception as err:
            if isinstance(err, user_errors()):
                return f"⚠️ {err}"
            logger.exception("compatibility check failed")
            return "⚠️ the compatibility check failed unexpectedly (see the server log)"

    def check(
        self, recipe: str, token: str | None, oauth_token: gr.OAuthToken | None = None
    ) -> str:
        """Check that a merge recipe's models can merge, from their safetensors headers only.

        Nothing but the headers is downloaded: architectures, tensor names, shapes and dtypes
        are compared with the base model's, per model. Run it before `merge`.

        Args:
            recipe: the merge recipe as YAML (hubmerge's, or a mergekit config).
            token: a Hub token that can read the recipe's models (blank for public models).

        Returns:
            the compatibility report as text; an invalid recipe is an error naming the problem.
        """
        with user_facing():
            return self._check(recipe, _token(token, oauth_token))

    def _check(self, text: str, token: str | None) -> str:
        from merging.check import check_recipe

        if not (text or "").strip():
            return "Add a base model and the models to merge."
        recipe = workflows.parse(text, self.settings)
        report = check_recipe(recipe, token=token, endpoint=self.settings.hub_endpoint)
        return report.render()
