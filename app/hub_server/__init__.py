"""A small Hugging Face Hub-compatible HTTP server backed by a directory.

It speaks enough of the Hub's HTTP API for `huggingface_hub` (create repo, preupload, git-lfs
``basic`` transfer, NDJSON commits, model info, tree, refs, resolve with Range requests,
list models, whoami) and therefore for `transformers` ``from_pretrained`` / ``push_to_hub``.

Clients must not use the Xet protocol, which this server does not implement: set
``HF_HUB_DISABLE_XET=1`` in the environment before `huggingface_hub` is imported (it reads
the variable once, at import), and point ``HF_ENDPOINT`` at the server (also read at import;
alternatively pass ``endpoint=`` to `HfApi`, `hf_hub_download`, `snapshot_download`).

Example:
    >>> from app.hub_server import running_server
    >>> with running_server("/tmp/hub-data", tokens={"hf_local": "alice"}) as url:
    ...     ...  # HfApi(endpoint=url, token="hf_local").create_repo("alice/merged")

See docs/hub.md for the supported endpoints and the limits.
"""

from ._control import ServerControl
from .server import create_app, running_app, running_server, serve
from .storage import RepoStore

__all__ = ["RepoStore", "ServerControl", "create_app", "running_app", "running_server", "serve"]
