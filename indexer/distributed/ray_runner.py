"""`xmodal index --engine ray`: the photos embedded on a Ray cluster, merged into the library by the driver.

    driver: walk + diff (indexer.ingest.pipeline.plan) -> shards (plan.cut) -> a Ray dataset, a row a shard
    Ray Data: map_batches(EmbedWorker) on an actor pool, one encoder an actor, one shard a call:
              read + decode + embed + project patch tokens -> <library>/staging/<shard>.shard.npz
    driver: each shard's row as it streams back -> store + FAISS index (merge.merge_shard, one transaction a
            shard) -> its staged file deleted

Ray Data's batch inference does the scheduling. Its actor pool starts its actors with max_restarts=-1 and
max_task_retries=-1: a worker process killed (SIGKILL, a lost node) is restarted by Ray and its shard retried;
a shard is only staged whole (atomic rename), so a retry cannot leave half of one. An actor killed while it
loads its model is restarted the same way. A call that fails (a bug, a model the worker cannot load) returns
its error in its row, so the driver stops the run naming the shard instead of Ray retrying or restarting it
forever. A driver killed mid-run leaves the committed shards in the store and the finished ones staged: the
next run merges those without embedding them again, then embeds the rest. Files must be on a path every node
sees. Without an address a local Ray instance is started (and stopped at the end); with one, the run joins
that cluster. The IVF-PQ build after a large run (ondisk.ray_pool) stays on plain Ray tasks. Ray is an
optional extra: `pip install 'xmodal[ray]'`."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

from xmodal.indexer.distributed.ondisk import build_ondisk, ray_pool, wants_ondisk
from xmodal.indexer.distributed.merge import MergeState, merge_shard
from xmodal.indexer.distributed.plan import SHARD_SIZE, cut, pending
from xmodal.indexer.distributed.shards import ShardError, read_shard, shard_path, staged, staging_dir
from xmodal.indexer.distributed.worker import PLUGINS_ENV
from xmodal.indexer.ingest.pipeline import (BATCH_SIZE, CHECKPOINT_SECONDS, IndexReport, backfill_patches,
                                            catch_up_texts, plan, walked_roots)
from xmodal.indexer.ingest.reembed import sync_weights
from xmodal.indexer.models.base import Encoder
from xmodal.indexer.models.device import batch_size_for
from xmodal.indexer.storage.index_tuning import TUNING_QUERIES, needs_rebuild
from xmodal.indexer.storage.library import Library, LibraryError
from xmodal.indexer.storage.revision import encoder_revision, stale_ids

logger = logging.getLogger(__name__)

#: environment the workers need from the driver's (plugins, model caches, the image runtime)
PASSED_ENV = (PLUGINS_ENV, "PYTHONPATH", "XMODAL_IMAGE_RUNTIME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_OFFLINE",
              "TRANSFORMERS_OFFLINE")
IN_FLIGHT_PER_WORKER = 2  # shards handed to each actor: one running, one waiting, so a worker never idles


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
    """Ray Data's callable class, one per actor of the pool: one encoder, loaded once; each call embeds one
    shard (a batch of one row) and stages it in the library. A failure comes back as the row's `error`, so
    the driver stops the run naming the shard (Ray retries the call of a killed actor, never a raised one)."""

    def __init__(self, model: str, device: str, patches: bool, batch_size: int, plugins: str | None,
                 folder: str):
        from xmodal.indexer.distributed.worker import load_plugins
        from xmodal.indexer.models.device import place
        from xmodal.indexer.models.encoders import get_encoder
        from xmodal.indexer.models.patch_projector import default_projector

        self.error = None
        try:
            load_plugins(plugins)
            self.encoder = place(get_encoder(model), device)
            self.projector = default_projector(self.encoder.name) if patches else None
        except Exception as e:  # told on every call: an actor whose constructor raises would end Ray Data's
            self.error = _one_line(e)  # run with no shard to name
        self.batch_size, self.folder = batch_size, folder

    def __call__(self, batch) -> dict[str, np.ndarray]:
        from xmodal.indexer.distributed.shards import write_shard
        from xmodal.indexer.distributed.worker import embed_shard

        name = batch.column("name")[0].as_py()
        paths = [os.fsdecode(p) for p in batch.column("paths")[0].as_py()]
        error = f"the worker could not load its model: {self.error}" if self.error else ""
        if not error:
            try:
                write_shard(self.folder, embed_shard(name, paths, self.encoder, self.projector, self.batch_size))
            except Exception as e:  # a bug: no retry would mend it
                logger.exception("shard %s failed", name)
                error = _one_line(e)
        # arrow strings are UTF-8: a path's surrogate escapes in the message are shown, not refused
        return {"name": np.array([name]), "pid": np.array([os.getpid()]),
                "error": np.array([error.encode("utf-8", "backslashreplace").decode()])}


def _one_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


@contextmanager
def quiet_data():
    """Ray Data without its progress bars, execution banners and INFO lines on the driver's console (the CLI
    prints its own progress); its errors still show, and its log file in the Ray session keeps the rest."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    quiet = dict(enable_progress_bars=False, enable_operator_progress_bars=False, print_on_execution_start=False,
                 enable_auto_log_stats=False, verbose_stats_logs=False)
    saved = {k: getattr(ctx, k) for k in quiet}
    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in consoles]
    for k, v in quiet.items():
        setattr(ctx, k, v)
    for h in consoles:
        h.setLevel(max(h.level, logging.ERROR))
    try:
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for h, level in zip(consoles, levels):
            h.setLevel(level)


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
                     verify: bool = False, ocr=None, ocr_setting: bool | None = None) -> IndexReport:
    """`index_images` with the embedding on Ray workers (see the module doc); the same report, the same
    library. `encoder` (on the driver) binds the model and encodes the tuning queries; each worker loads its
    own by name. `patches`: the reranker's projector, or None. `ocr`, `ocr_setting`: as `index_images` (the
    text is read by the driver once the workers' embeddings are merged)."""
    t0 = time.perf_counter()
    report = IndexReport()
    with library.writing():
        if ocr_setting is not None:
            library.store.set_meta("ocr", bool(ocr_setting))
        _run(library, roots, encoder, address, workers, device, batch_size, shard_size, progress, should_stop,
             patches, verify, report)
        if ocr is not None and not report.interrupted:
            from xmodal.indexer.ingest.ocr_pass import read_library_text

            report.ocr_read = read_library_text(library, ocr, 2, should_stop, report.skipped)
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
    sync_weights(library, encoder)  # other weights made its vectors: the stale rows are embedded again
    stale = stale_ids(library, "images")
    unembedded = set(library.unembedded.get("images", np.empty(0)).tolist()) | set(stale.tolist())
    todo, changed, vanished = plan(library, walked_roots(library, report.roots, stale), report, force=unembedded,
                                   verify=verify)
    state = MergeState(changed, unembedded, patch_store=patch_store)
    folder = staging_dir(library.root)
    if progress:
        progress(0, len(todo))
    # shards a killed run left behind
    done = set(_merge_staged(library, folder, state, report, encoder.name, encoder_revision(encoder)))
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
    if not report.interrupted:
        catch_up_texts(library, encoder, report)
    if patch_store is not None and not report.interrupted:
        report.patched = backfill_patches(library, encoder, patches, batch_size, 2, should_stop, report)


def _merge_staged(library: Library, folder, state: MergeState, report: IndexReport, model: str,
                  revision: str | None = None) -> list[str]:
    """Merge the shard files an earlier (killed) run staged; a damaged one is deleted (its photos are
    embedded again). Returns the paths they handled."""
    handled: list[str] = []
    if folder.is_dir():
        for partial in folder.glob(".*.tmp"):  # a worker killed while writing its shard: never renamed in place
            partial.unlink(missing_ok=True)
    for path in staged(folder):
        try:
            result = read_shard(path)
            handled += merge_shard(library, result, state, report, model, check_current=True, revision=revision)
        except ShardError as e:
            logger.warning("%s; its photos are embedded again", e)
        except ValueError as e:  # another model's (or its earlier weights') shard: of no use to this library
            logger.warning("%s; deleted", e)
        path.unlink(missing_ok=True)
    if handled:
        logger.info("%s: merged %d photos an earlier run had embedded", library.root, len(handled))
    return handled


def _embed_and_merge(ray, address, library, shards, folder, encoder, state, report, device, batch_size, n_workers,
                     with_patches, total, progress, should_stop) -> None:
    from ray.data import ActorPoolStrategy

    remote_args = {}
    if address:  # a cluster's workers get the driver's settings; a local instance's inherit them (and start sooner)
        remote_args["runtime_env"] = {"env_vars": {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}}
    n_workers = min(n_workers, len(shards))  # an actor per shard at most: more would only load models
    by_name = {s.name: s for s in shards}
    logger.info("ray data: %d shards of up to %d photos on an actor pool of %d (%s)", len(shards),
                len(shards[0].paths), n_workers, device)
    last_save = time.monotonic()
    with quiet_data():
        items = [{"name": s.name, "paths": [os.fsencode(p) for p in s.paths]} for s in shards]  # bytes: any name
        # Ray Data starts the pool's actors with max_restarts=-1, max_task_retries=-1 (ActorPoolMapOperator's
        # defaults): a killed actor is restarted and its shard retried; an exception in a call is not retried
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            EmbedWorker, batch_size=1, batch_format="pyarrow",
            fn_constructor_args=(encoder.name, device, with_patches, batch_size, os.environ.get(PLUGINS_ENV),
                                 str(folder)),
            compute=ActorPoolStrategy(size=n_workers, max_tasks_in_flight_per_actor=IN_FLIGHT_PER_WORKER),
            num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0, **remote_args)
        rows = iter(dataset.iter_rows())
        try:
            for row in rows:
                shard = by_name[row["name"]]
                if row["error"]:
                    raise LibraryError(f"a Ray worker failed on shard {shard.name} ({shard.paths[0]}...): "
                                       f"{row['error']}")
                path = shard_path(folder, shard.name)
                try:
                    merge_shard(library, read_shard(path), state, report, encoder.name,
                                revision=encoder_revision(encoder))
                except ValueError as e:  # a worker running another xmodal's weights: never mixed in
                    raise LibraryError(f"{e}: every Ray worker needs this xmodal version's model files") from e
                path.unlink(missing_ok=True)
                report.processed += len(shard.paths)
                if progress:
                    progress(report.processed, total)
                if should_stop is not None and should_stop():
                    report.interrupted = True  # shards in flight are dropped: the next run embeds them
                    return
                if time.monotonic() - last_save > CHECKPOINT_SECONDS:
                    library.save("images")
                    library.store.checkpoint()
                    last_save = time.monotonic()
        except ray.exceptions.RayError as e:  # Ray Data itself gave up (an actor that cannot even start)
            raise LibraryError(f"the Ray Data run failed: {_one_line(getattr(e, 'cause', None) or e)}") from e
        finally:
            close = getattr(rows, "close", None)
            if close:  # stops the run: its actors are killed, shards in flight dropped
                close()
    stats = dataset.stats()
    logger.info("ray data: %s", next((line for line in stats.splitlines() if "MapBatches(" in line), "no stats"))
    logger.debug("ray data: %s", stats)
