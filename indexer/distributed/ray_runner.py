"""`xmodal index --engine ray`: the photos embedded on a Ray cluster, merged into the library by the driver.

    driver: walk + diff (indexer.ingest.pipeline.plan) -> shards (plan.cut) -> Ray actors, one encoder each
    worker: read + decode + embed + project patch tokens -> <library>/staging/<shard>.shard.npz
    driver: each staged shard -> store + FAISS index (merge.merge_shard, one transaction a shard) -> deleted

Ray core actors with restarts do the scheduling: a worker process killed (SIGKILL, a lost node) is restarted
by Ray and its shard retried; a shard is only staged whole (atomic rename), so a retry cannot leave half of
one. A driver killed mid-run leaves the committed shards in the store and the finished ones staged: the next
run merges those without embedding them again, then embeds the rest. Files must be on a path every node sees.
Without an address a local Ray instance is started (and stopped at the end); with one, the run joins that
cluster. Ray is an optional extra: `pip install 'xmodal[ray]'`."""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

from xmodal.indexer.distributed.ondisk import build_ondisk, ray_pool, wants_ondisk
from xmodal.indexer.distributed.merge import MergeState, merge_shard
from xmodal.indexer.distributed.plan import SHARD_SIZE, cut, pending
from xmodal.indexer.distributed.shards import ShardError, read_shard, shard_path, staged, staging_dir
from xmodal.indexer.distributed.worker import PLUGINS_ENV
from xmodal.indexer.ingest.pipeline import (BATCH_SIZE, CHECKPOINT_SECONDS, IndexReport, backfill_patches, plan)
from xmodal.indexer.models.base import Encoder
from xmodal.indexer.models.device import batch_size_for
from xmodal.indexer.storage.index_tuning import TUNING_QUERIES, needs_rebuild
from xmodal.indexer.storage.library import Library, LibraryError

logger = logging.getLogger(__name__)

#: environment the workers need from the driver's (plugins, model caches, the image runtime)
PASSED_ENV = (PLUGINS_ENV, "PYTHONPATH", "XMODAL_IMAGE_RUNTIME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_OFFLINE",
              "TRANSFORMERS_OFFLINE")
IN_FLIGHT_PER_WORKER = 2  # shards queued on each actor: one running, one waiting, so a worker never idles


def _ray():
    try:
        import ray
    except ImportError:
        raise LibraryError("--engine ray needs Ray, an optional extra: pip install 'xmodal[ray]'") from None
    return ray


@contextmanager
def connected(address: str | None, workers: int | None) -> Iterator[object]:
    """Ray, connected: to the cluster at `address`, else a Ray instance already started in this process, else
    a local one with `workers` CPUs (stopped again at the end)."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                         configure_logging=False,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise LibraryError(f"cannot start or reach {where}: {str(e).splitlines()[0]}") from e
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class EmbedWorker:
    """A Ray actor: one encoder, loaded once; embeds shards and stages them in the library."""

    def __init__(self, model: str, device: str, patches: bool, batch_size: int, plugins: str | None):
        from xmodal.indexer.distributed.worker import load_plugins
        from xmodal.indexer.models.device import place
        from xmodal.indexer.models.encoders import get_encoder
        from xmodal.indexer.models.patch_projector import default_projector

        self.error = None
        try:
            load_plugins(plugins)
            self.encoder = place(get_encoder(model), device)
            self.projector = default_projector(self.encoder.name) if patches else None
        except Exception as e:  # kept for the first task to raise: Ray would restart a failing actor forever
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.batch_size = batch_size

    def embed(self, name: str, paths: list[str], folder: str) -> tuple[str, int]:
        from xmodal.indexer.distributed.shards import write_shard
        from xmodal.indexer.distributed.worker import embed_shard

        if self.error:
            raise RuntimeError(f"the worker could not load its model: {self.error}")

        write_shard(folder, embed_shard(name, paths, self.encoder, self.projector, self.batch_size))
        return name, os.getpid()


def worker_count(ray, workers: int | None, device: str) -> int:
    """Actors to start: `workers`, else one per CPU of the cluster (per GPU with a GPU device)."""
    kind = "GPU" if device.startswith("cuda") else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if have == 0:  # actors asking for one would wait forever
        raise LibraryError(f"--device {device}: the Ray cluster has no {kind}s; start its nodes with {kind}s "
                           "(`ray start --num-gpus N`), or use --device cpu")
    if workers and workers > have:
        logger.warning("%d workers asked, but the Ray cluster has %d %ss now: the others wait for nodes to join",
                       workers, have, "GPU" if device.startswith("cuda") else "CPU")
    return workers or max(1, have)


def index_images_ray(library: Library, roots: Sequence[str] | None, encoder: Encoder, address: str | None = None,
                     workers: int | None = None, device: str = "cpu", batch_size: int = BATCH_SIZE,
                     shard_size: int = SHARD_SIZE, progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, patches=None,
                     verify: bool = False) -> IndexReport:
    """`index_images` with the embedding on Ray workers (see the module doc); the same report, the same
    library. `encoder` (on the driver) binds the model and encodes the tuning queries; each worker loads its
    own by name. `patches`: the reranker's projector, or None."""
    t0 = time.perf_counter()
    report = IndexReport()
    with library.writing():
        _run(library, roots, encoder, address, workers, device, batch_size, shard_size, progress, should_stop,
             patches, verify, report)
    report.seconds = time.perf_counter() - t0
    logger.info("ray: added %d, re-embedded %d, moved %d, unchanged %d, removed %d, skipped %d in %.1fs",
                report.added, report.reembedded, report.moved, report.unchanged, report.removed,
                len(report.skipped), report.seconds)
    return report


def _run(library, roots, encoder, address, workers, device, batch_size, shard_size, progress, should_stop,
         patches, verify, report) -> None:
    library.bind_model(encoder.name, encoder.dim)
    if patches is not None and not hasattr(encoder, "encode_images_with_patches"):
        logger.warning("model %s gives no patch tokens; photos are indexed without them", encoder.name)
        patches = None
    patch_store = library.patch_store(patches.spec) if patches is not None else None
    if roots:
        library.add_roots(roots)
        report.roots = [os.path.realpath(r) for r in roots]
    else:
        report.roots = library.roots
        if not report.roots:
            raise LibraryError(f"library {library.root} has no folders yet; give one: `xmodal index PATH`")
    library.reconcile()
    unembedded = set(library.unembedded.get("images", np.empty(0)).tolist())
    todo, changed, vanished = plan(library, report.roots, report, force=unembedded, verify=verify)
    state = MergeState(changed, unembedded, patch_store=patch_store)
    folder = staging_dir(library.root)
    if progress:
        progress(0, len(todo))
    done = set(_merge_staged(library, folder, state, report, encoder.name))  # shards a killed run left behind
    left = [p for p in todo if p not in done]
    report.processed = len(todo) - len(left)
    shards = pending(cut(left, shard_size), {p.name.split(".")[0] for p in staged(folder)})
    if shards:
        with connected(address, workers) as ray:
            _embed_and_merge(ray, address, library, shards, folder, encoder, state, report, device,
                             batch_size_for(device, batch_size), worker_count(ray, workers, device),
                             patch_store is not None, len(todo), progress, should_stop)
    if not report.interrupted:
        doomed = sorted(set(vanished) - state.claimed)
        if doomed:
            library.delete_images(doomed)
            report.removed = len(doomed)
        index = library.vector_index("images")
        grown = needs_rebuild(index.factory, index.ntotal, index.dim)
        if grown and wants_ondisk(grown):  # IVF-PQ: parts filled on the workers, lists merged on disk
            with connected(address, workers) as ray:
                report.rebuilt = build_ondisk(library, "images", grown, encoder.encode_texts(TUNING_QUERIES),
                                              pool=ray_pool(ray, 2 * worker_count(ray, workers, "cpu")))
        elif grown:
            report.rebuilt = library.rebuild_index("images", grown, queries=encoder.encode_texts(TUNING_QUERIES))
    library.save("images")
    if patch_store is not None and not report.interrupted:
        report.patched = backfill_patches(library, encoder, patches, batch_size, 2, should_stop, report)


def _merge_staged(library: Library, folder, state: MergeState, report: IndexReport, model: str) -> list[str]:
    """Merge the shard files an earlier (killed) run staged; a damaged one is deleted (its photos are
    embedded again). Returns the paths they handled."""
    handled: list[str] = []
    if folder.is_dir():
        for partial in folder.glob(".*.tmp"):  # a worker killed while writing its shard: never renamed in place
            partial.unlink(missing_ok=True)
    for path in staged(folder):
        try:
            result = read_shard(path)
            handled += merge_shard(library, result, state, report, model, check_current=True)
        except ShardError as e:
            logger.warning("%s; its photos are embedded again", e)
        except ValueError as e:  # another model's shard: of no use to this library any more
            logger.warning("%s; deleted", e)
        path.unlink(missing_ok=True)
    if handled:
        logger.info("%s: merged %d photos an earlier run had embedded", library.root, len(handled))
    return handled


def _embed_and_merge(ray, address, library, shards, folder, encoder, state, report, device, batch_size, n_workers,
                     with_patches, total, progress, should_stop) -> None:
    options = dict(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0, max_restarts=-1,
                   max_task_retries=-1)
    if address:  # a cluster's workers get the driver's settings; a local instance's inherit them (and start sooner)
        options["runtime_env"] = {"env_vars": {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}}
    remote = ray.remote(EmbedWorker).options(**options)
    plugins = os.environ.get(PLUGINS_ENV)
    actors = [remote.remote(encoder.name, device, with_patches, batch_size, plugins) for _ in range(n_workers)]
    logger.info("ray: %d shards of up to %d photos on %d workers (%s)", len(shards), len(shards[0].paths),
                n_workers, device)
    queue = deque(shards)
    inflight: dict = {}

    def submit(actor) -> None:
        shard = queue.popleft()
        inflight[actor.embed.remote(shard.name, list(shard.paths), str(folder))] = (shard, actor)

    for _ in range(IN_FLIGHT_PER_WORKER):
        for actor in actors:
            if queue:
                submit(actor)
    last_save = time.monotonic()
    try:
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            shard, actor = inflight.pop(ready[0])
            try:
                ray.get(ready[0])
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:  # a bug, or a worker that
                cause = getattr(e, "cause", None) or e                                  # cannot load its model
                lines = [line for line in str(cause).splitlines() if line.strip()]
                raise LibraryError(f"a Ray worker failed on shard {shard.name} ({shard.paths[0]}...): "
                                   f"{lines[-1] if lines else type(e).__name__}") from e
            path = shard_path(folder, shard.name)
            merge_shard(library, read_shard(path), state, report, encoder.name)
            path.unlink(missing_ok=True)
            report.processed += len(shard.paths)
            if progress:
                progress(report.processed, total)
            if should_stop is not None and should_stop():
                report.interrupted = True  # shards in flight are dropped: the next run embeds them
                return
            if queue:
                submit(actor)
            if time.monotonic() - last_save > CHECKPOINT_SECONDS:
                library.save("images")
                library.store.checkpoint()
                last_save = time.monotonic()
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
