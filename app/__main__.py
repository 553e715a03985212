"""``python -m app``: read settings, (optionally) start the offline demo Hub, launch the app.

Settings come from environment variables (docs/settings.md), read here and not at import.
``python -m app --demo`` is the same as ``hubmerge serve --demo``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from app.settings import Settings, read_settings
from app.warmup import quiet_monitoring, warm_up

logger = logging.getLogger("hubmerge.app")


def run(settings: Settings) -> None:
    """Start the app with `settings` (blocks until interrupted)."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if settings.demo:
            settings = stack.enter_context(_demo(settings))
        from app.ui import build_demo

        demo = build_demo(settings)
        quiet_monitoring()  # before queue(), which reads it
        warm_up()  # the evaluation stack imported and the heap frozen before the first user
        demo.queue(default_concurrency_limit=settings.concurrency)
        logger.info(
            "hubmerge on http://%s:%d (data in %s, Hub %s)",
            settings.host,
            settings.port,
            settings.data_dir,
            settings.hub_endpoint or "huggingface.co",
        )
        try:
            demo.launch(
                server_name=settings.host,
                server_port=settings.port,
                show_error=True,
                footer_links=["api", "gradio"],
                allowed_paths=[str(settings.jobs_dir)],
                mcp_server=True,  # the API's endpoints as MCP tools, at /gradio_api/mcp/
            )
        finally:
            demo.runner.shutdown()  # type: ignore[attr-defined]


@contextlib.contextmanager
def _demo(settings: Settings):  # type: ignore[no-untyped-def]
    """The demo's local Hub is the app's Hub: `HF_ENDPOINT` is never taken from a form."""
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "0"
    import torch

    from app.demo import DEMO_TOKEN, start_demo

    torch.set_num_threads(1)  # the demo models are tiny: threads only add overhead
    clients = dict([settings.oauth_client]) if settings.oauth_client else None
    demo = start_demo(settings.data_dir, port=settings.demo_hub_port, oauth_clients=clients)
    with demo as (url, models):
        yield settings.with_(
            hub_endpoint=url,
            # on Spaces each user signs in; the demo token is only pre-filled elsewhere
            default_token=None if settings.on_spaces else DEMO_TOKEN,
            probe_examples=settings.probe_examples or models.examples,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    settings = read_settings()
    if "--demo" in args:
        settings = settings.with_(demo=True)
    run(settings)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
