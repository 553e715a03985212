"""Scale-out on Ray: one resident `InMemoryEvaluator` per Ray actor.

Each actor loads the base and the task vectors itself (from the pinned references: local
folders, or Hub ids at a commit), so weights never travel through Ray's object store; only
recipe YAML goes out and a score comes back. The driver's ask/tell loop keeps every actor
busy (no generation barrier).

A local Ray (``--ray``) is started on 127.0.0.1 only and sends no usage statistics; to use an
existing cluster, pass its address (``--ray-address HOST:PORT``). Needs ``hubmerge[ray]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from app.search.errors import BackendUnavailableError, SearchError
from merging import Recipe

logger = logging.getLogger(__name__)

# Ray reads these at import / start: no usage reports; a single-node Ray on Linux uses the
# loopback address for every service when clusters are off (Ray's "local only" mode).
LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def is_loopback(address: str | None) -> bool:
    """Whether `address` (``HOST:PORT``; `None` for a new local Ray) is on this machine only."""
    if address is None:
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _import_ray(*, loopback: bool) -> Any:
    """Import Ray with usage statistics off; for a loopback cluster, with clusters off too.

    Ray (2.60) replaces a loopback node address with the machine's routable one unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; it reads that when it is imported, so a process
    that imported Ray earlier gets the same setting through the constant it set.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if loopback:
        os.environ.update(LOCAL_ENV)
    try:
        import ray
        from ray._private import ray_constants
    except ImportError as err:
        raise BackendUnavailableError(
            "the Ray backend needs Ray: pip install 'hubmerge[ray]'"
        ) from err
    if loopback:
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


class _Worker:
    """The actor: a resident evaluator; scores recipe YAML."""

    def __init__(self, recipe_yaml: str, rows: list[dict[str, Any]], metric: str, device: str,
                 endpoint: str | None, token: str | None) -> None:  # fmt: skip
        import torch

        from app.search.evaluator import InMemoryEvaluator
        from merging import load_recipe

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.evaluator = InMemoryEvaluator(load_recipe(recipe_yaml), rows, metric=metric,
                                           device=device, token=token, endpoint=endpoint)

    def score(self, recipe_yaml: str) -> tuple[float, float]:
        import time

        from merging import load_recipe

        started = time.perf_counter()
        value = self.evaluator.score(load_recipe(recipe_yaml))
        return value, time.perf_counter() - started

    def ready(self) -> float:
        return self.evaluator.load_seconds

    def reference(self) -> Any:
        return self.evaluator.reference


class RayBackend:
    """`workers` Ray actors, each with its own resident evaluator.

    Args:
        recipe (`Recipe`): the pinned recipe (every worker resolves its sources itself).
        rows: the selection examples (small: sent once to each actor).
        address (`str`, *optional*): an existing cluster's address; `None` starts a local Ray
            on 127.0.0.1 for this process. `close` disconnects (and stops a local Ray) when
            this backend made the connection.
        workers (`int`): actors (default: the cluster's CPUs, at most 8).
    """

    name = "ray"

    def __init__(
        self,
        recipe: Recipe,
        rows: Sequence[Any],
        *,
        address: str | None = None,
        workers: int | None = None,
        metric: str = "loss",
        device: str = "cpu",
        token: str | None = None,
        endpoint: str | None = None,
        cpus_per_worker: float = 1.0,
    ) -> None:
        ray = _import_ray(loopback=is_loopback(address))
        self.ray = ray
        self._owns = False
        if not ray.is_initialized():
            self._owns = True  # this process connected, so it disconnects in `close`
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address="local", num_cpus=workers or None, include_dashboard=False,
                         _node_ip_address="127.0.0.1", log_to_driver=False,
                         configure_logging=False)  # fmt: skip
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, workers or min(8, int(cpus // cpus_per_worker)))
        data = [r.model_dump(exclude_none=True) if hasattr(r, "model_dump") else dict(r)
                for r in rows]  # fmt: skip
        actor = ray.remote(num_cpus=cpus_per_worker)(_Worker)
        env = {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus_per_worker)))}}
        self.actors = [
            actor.options(runtime_env=env).remote(recipe.to_yaml(), data, metric, device,
                                                  endpoint, token)
            for _ in range(self.workers)
        ]  # fmt: skip
        try:
            self.load_seconds = ray.get([a.ready.remote() for a in self.actors])
        except Exception as err:
            self.close()
            raise SearchError(f"a Ray worker could not load the models: {err}") from err
        self._idle = list(range(self.workers))
        self._running: dict[Any, tuple[int, int]] = {}  # object ref -> (ticket, worker)
        logger.info("ray backend: %d worker(s) ready", self.workers)

    def reference(self) -> Any:
        """The first actor's `TaskReference` (``worst_gap``), else `None`."""
        return self.ray.get(self.actors[0].reference.remote())

    def submit(self, ticket: int, recipe_yaml: str) -> None:
        if not self._idle:
            raise SearchError("no idle Ray worker (the loop submitted too much)")
        worker = self._idle.pop(0)
        ref = self.actors[worker].score.remote(recipe_yaml)
        self._running[ref] = (ticket, worker)

    def collect(self) -> tuple[int, float, float, int]:
        done, _ = self.ray.wait(list(self._running), num_returns=1)
        ticket, worker = self._running.pop(done[0])
        self._idle.append(worker)
        try:
            score, seconds = self.ray.get(done[0])
        except Exception as err:
            raise SearchError(f"Ray worker {worker} failed on candidate {ticket}: {err}") from err
        return ticket, float(score), float(seconds), worker

    def discard(self) -> None:
        for ref, (_, worker) in list(self._running.items()):
            try:
                self.ray.cancel(ref, force=False)
            except Exception:  # finished meanwhile, or not cancellable: its score is dropped
                logger.debug("could not cancel a Ray task", exc_info=True)
            self._idle.append(worker)
        self._running.clear()

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        if self._owns:
            self.ray.shutdown()
