"""Talk to the Hugging Face Hub: resolve, download, read headers remotely, search, push.

Every function takes the user's `token` as a keyword argument and passes it straight to
`huggingface_hub`; it is never logged, stored, or put into a message. ``token=None`` means
anonymous: the machine's stored token is never used implicitly (in a multi-user app it would
belong to someone else). `endpoint` defaults to `HF_ENDPOINT` (read by `huggingface_hub` at
import); pass it to talk to another Hub, e.g. the local server of `app.hub_server`.

Errors from the Hub become `merging.errors` classes, raised ``from`` the original:
401 → `AuthError`, gated → `GatedRepoAccessError`, 404 → `NotFoundError`, 409 →
`RepoExistsError`; 429/5xx and connection errors are retried with backoff, then `HubError`.
"""

from merging.hub.download import MERGE_FILES, PICKLE_FILES, download_model, resolve_revision
from merging.hub.headers import RemoteModel, remote_config, remote_model, remote_tensor_headers
from merging.hub.push import PushResult, push_folder, write_eval_results_to_card
from merging.hub.search import ModelSummary, search_models

__all__ = [
    "MERGE_FILES",
    "PICKLE_FILES",
    "ModelSummary",
    "PushResult",
    "RemoteModel",
    "download_model",
    "push_folder",
    "remote_config",
    "remote_model",
    "remote_tensor_headers",
    "resolve_revision",
    "search_models",
    "write_eval_results_to_card",
]
