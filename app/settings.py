"""App settings, read from environment variables once, in ``main()`` (never at import).

Every variable is listed in docs/settings.md. Forms never choose the Hub endpoint: it comes
from ``HF_ENDPOINT`` here (or from ``--demo``, which points it at the local Hub server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

TRUE = {"1", "true", "yes", "on"}


def default_data_dir(env: Mapping[str, str]) -> Path:
    """``/data/hubmerge`` when a writable ``/data`` exists (Spaces), else ``~/.cache/hubmerge``."""
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/hubmerge")
    home = Path(env.get("HOME") or Path.home())
    return home / ".cache" / "hubmerge"


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment.

    Attributes:
        data_dir: jobs database, job outputs, demo models and the demo Hub live here.
        host / port: where the web server listens.
        concurrency: heavy jobs (merge, evaluate, push, soup) running at once; more wait.
        hub_endpoint: the Hub to talk to (`None`: huggingface_hub's default, i.e. the real Hub).
        demo: serve the offline demo (local Hub seeded with tiny models).
        on_spaces: running inside a Hugging Face Space with OAuth (``hf_oauth: true``): the
            sign-in button replaces the token field and each user's OAuth token is used.
        oauth_client: the Space's OAuth (client id, secret); with ``demo`` the demo Hub
            registers it, so sign-in can be rehearsed offline against the local Hub.
        demo_hub_port: port of the demo's local Hub (0: any free port).
        local_paths: accept local directories as models: True / False as the operator set
            ``HUBMERGE_ALLOW_LOCAL_PATHS``; None (unset): only when listening on a loopback
            address outside a Space. Never below `data_dir` (`app.local_paths`).
        in_space: running inside a Hugging Face Space (``SPACE_ID`` is set).
        keep_hours: job outputs are removed this long after the job finished (0: never).
        max_queued: heavy jobs one identity may have queued or running at once.
        disk_reserve_bytes: free space a merge must leave on the data dir's disk.
        default_token: a token pre-filled in the form (only the demo's public token).
        eval_include_paths: extra lm-evaluation-harness task folders offered to evaluate.
        probe_examples: jsonl examples for the interpolation plot (default: built-in ones).
        device: device for merges and evaluations (`None`: the accelerator if any).
        tensor_delay: seconds to sleep per merged tensor (to watch progress in demos/tests).
        log_level: root logging level.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1
    hub_endpoint: str | None = None
    demo: bool = False
    on_spaces: bool = False
    oauth_client: tuple[str, str] | None = field(default=None, repr=False)
    demo_hub_port: int = 0
    local_paths: bool | None = None
    in_space: bool = False
    keep_hours: float = 24.0
    max_queued: int = 3
    disk_reserve_bytes: int = 0
    default_token: str | None = field(default=None, repr=False)
    eval_include_paths: tuple[Path, ...] = ()
    probe_examples: Path | None = None
    device: str | None = None
    tensor_delay: float = 0.0
    log_level: str = "INFO"

    @property
    def jobs_db(self) -> Path:
        return self.data_dir / "jobs.sqlite"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def allow_local_paths(self) -> bool:
        """Whether recipes may name local folders (see `local_paths`)."""
        if self.local_paths is not None:
            return self.local_paths
        from app.local_paths import is_loopback

        return is_loopback(self.host) and not self.in_space

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _flag(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    value = env.get(name)
    return default if value is None or value == "" else value.strip().lower() in TRUE


def _paths(value: str | None) -> tuple[Path, ...]:
    return tuple(Path(p) for p in (value or "").split(os.pathsep) if p.strip())


def read_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from environment variables (default: ``os.environ``).

    Raises:
        `ValueError`: a numeric variable does not parse (the message names it).
    """
    env = os.environ if env is None else env
    # gradio runs the real OAuth flow only where SYSTEM=spaces (else it mocks the sign-in)
    on_spaces = all(env.get(k) for k in ("SPACE_ID", "OAUTH_CLIENT_ID")) and (
        env.get("SYSTEM") == "spaces"
    )
    client_id, client_secret = env.get("OAUTH_CLIENT_ID"), env.get("OAUTH_CLIENT_SECRET")

    def number(name: str, default: float, kind: type = int) -> float:
        raw = env.get(name)
        if raw in (None, ""):
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None

    data_dir = env.get("HUBMERGE_DATA_DIR")
    in_space = bool(env.get("SPACE_ID"))
    return Settings(
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(env),
        host=env.get("HUBMERGE_HOST") or env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        port=int(number("HUBMERGE_PORT", number("GRADIO_SERVER_PORT", 7860))),
        concurrency=max(1, int(number("HUBMERGE_CONCURRENCY", 1))),
        hub_endpoint=(env.get("HF_ENDPOINT") or None),
        demo=bool(_flag(env, "HUBMERGE_DEMO", False)),
        on_spaces=on_spaces,
        oauth_client=(client_id, client_secret) if client_id and client_secret else None,
        demo_hub_port=int(number("HUBMERGE_DEMO_HUB_PORT", 0)),
        local_paths=_flag(env, "HUBMERGE_ALLOW_LOCAL_PATHS", None),
        in_space=in_space,
        keep_hours=max(0.0, float(number("HUBMERGE_KEEP_HOURS", 24.0, float))),
        max_queued=max(1, int(number("HUBMERGE_MAX_QUEUED", 3))),
        disk_reserve_bytes=int(float(number("HUBMERGE_DISK_RESERVE_GB", 0.0, float)) * 1e9),
        eval_include_paths=_paths(env.get("HUBMERGE_EVAL_INCLUDE")),
        probe_examples=Path(env["HUBMERGE_PROBE_EXAMPLES"])
        if env.get("HUBMERGE_PROBE_EXAMPLES")
        else None,
        device=env.get("HUBMERGE_DEVICE") or None,
        tensor_delay=float(number("HUBMERGE_TENSOR_DELAY", 0.0, float)),
        log_level=(env.get("HUBMERGE_LOG_LEVEL") or "INFO").upper(),
    )
