"""`xmodal bench speed`: indexing throughput next to the image tower's forward-pass rate, and text-query
latency / ANN recall / speedup over exact search / a search process's memory at a chosen scale, in one run on
this machine.

The scale figures come from engine.eval.scale.run_scale, the same code as benchmarks/scale.py and
scale_10m.py: `scale` vectors simulated like real photo embeddings (the Flickr8k photos when the data is
found, else the photos given; engine.eval.sources), xmodal's own index chosen under a 1.5 GB budget and tuned,
real text queries, a fresh search process for the memory. Medians of repeated measurements; the CPU model and
core count are reported with them.
"""
from __future__ import annotations

import logging
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.engine.eval.scale import BUDGET_BYTES, run_scale
from xmodal.engine.eval.search_process import ms
from xmodal.engine.eval.simulate import DESCRIPTIONS
from xmodal.engine.eval.sources import Base, base_embeddings
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.models.base import Encoder
from xmodal.indexer.storage.library import Library
from xmodal.engine.eval.machine import machine  # noqa: F401 - also imported from here (benchmarks/scale.py)

logger = logging.getLogger(__name__)


def _num(x: float) -> float | None:
    return round(float(x), 1) if np.isfinite(x) else None


def forward_rate(encoder: Encoder, batch: int = 16, repeats: int = 5, channels_last: bool = False) -> float:
    """Images/s of the image tower alone (preprocessed random pixels, batch `batch`), median of repeats;
    with `channels_last`, input and weights in the NHWC memory format (on a copy of the model)."""
    import copy

    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "image_patches"):
        return float("nan")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=fmt)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    rates = []
    with torch.inference_mode():
        model.encode_image(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.encode_image(x)
            rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def onnx_forward_rates(encoder: Encoder, batch: int = 16, repeats: int = 5) -> dict[str, float]:
    """Images/s of the encoder's ONNX Runtime image path (what the lite encoder indexes with when
    onnxruntime is installed), uint8 pixels in, embeddings and patch maps out, two ways side by side:
    {"session": one session using every core, "lanes": one single-threaded session per core running
    batches concurrently (what indexing uses)}; empty when the encoder has no ONNX path."""
    import threading

    onnx = getattr(encoder, "onnx", None)
    if onnx is None:
        return {}
    size = encoder.preprocess.size
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)  # normalised in the graph
    lanes = list(range(onnx.lanes))
    for lane in [None, *lanes]:  # warm-up: the first run of a session allocates its memory
        onnx(x, lane)

    def run_lane(lane: int, n: int) -> None:
        for _ in range(n):
            onnx(x, lane)

    single, parallel = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        t0 = time.perf_counter()
        onnx(x)
        single.append(batch / (time.perf_counter() - t0))
        threads = [threading.Thread(target=run_lane, args=(lane, 2)) for lane in lanes]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel.append(2 * batch * len(lanes) / (time.perf_counter() - t0))
    return {"session": statistics.median(single), "lanes": statistics.median(parallel)}


def onnx_forward_rate(encoder: Encoder, batch: int = 16, repeats: int = 5) -> float:
    """The faster of `onnx_forward_rates`, or nan without an ONNX path."""
    rates = onnx_forward_rates(encoder, batch, repeats)
    return max(rates.values()) if rates else float("nan")


def warm_up(encoder: Encoder, images: list) -> None:
    """Run the image path once on every inference lane, so that timings see a running indexer."""
    lanes = int(getattr(encoder, "lanes", 1))
    for lane in range(lanes) if lanes > 1 else [None]:
        if hasattr(encoder, "encode_images_with_patches"):
            encoder.encode_images_with_patches(images, **({} if lane is None else {"lane": lane}))
        else:
            encoder.encode_images(images)


def index_rate(encoder: Encoder, photos: Path, runs: int = 3) -> tuple[float, Library | None, np.ndarray, np.ndarray]:
    """Median images/s of `runs` indexing runs of `photos` into fresh libraries (encoder warmed up first),
    with the last run's (image vectors, patch tokens)."""
    from PIL import Image

    from xmodal.indexer.models.patch_projector import default_projector

    projector = default_projector(encoder.name)
    warm_up(encoder, [Image.new("RGB", (640, 480), (120, 90, 60))] * 16)
    rates, real, tokens = [], np.zeros((0, encoder.dim), np.float32), np.zeros((0,))
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            with Library(Path(tmp) / "lib", create=True) as lib:
                report = index_images(lib, [str(photos)], encoder, patches=projector)
                rates.append(report.indexed / report.seconds if report.seconds else float("nan"))
                ids = lib.vector_index("images").ids()
                real = lib.vector_index("images").reconstruct(ids)
                if projector is not None:
                    records = lib.store.get_images(ids.tolist())
                    tokens, found = lib.patch_store().read([r.id for r in records], [r.sha256 for r in records])
                    tokens = tokens[found]
    return statistics.median(rates), real, tokens


def stage_latencies(encoder: Encoder, captions: list[str], photo_vectors: np.ndarray, k: int = 32) -> dict:
    """{"encode_ms": the encoder on one text query, "rerank32_ms": the model's own torch reranker on its top `k`
    (stored-format patch tokens, with the hubness priors and the exemplar term of `k` real photo vectors; None
    without a reranker for this encoder)}: median / p95 over `captions`, after a warm-up of 5. The reranker a
    search runs (ONNX Runtime) is timed by `rerank_latencies`."""
    from xmodal.indexer.models.towers import bundled_reranker

    checkpoint = bundled_reranker(encoder.name)
    states = hasattr(encoder, "encode_text_states")
    encode = encoder.encode_text_states if states else encoder.encode_texts
    for c in captions[:5]:
        encode([c])
    times = []
    for c in captions:
        t = time.perf_counter()
        encode([c])
        times.append(time.perf_counter() - t)
    out = {"encode_ms": ms(times), "rerank32_ms": None}
    if not states or checkpoint is None:
        return out
    from xmodal.engine.rerank.lite import Reranker

    out["rerank32_ms"] = rerank_latencies(Reranker(checkpoint), encoder, captions, photo_vectors, k)["total_ms"]
    return out


def rerank_latencies(scorer, encoder, captions: list[str], photo_vectors: np.ndarray, k: int = 32) -> dict:
    """A reranker (the banks.RerankBanks surface with `score`: the torch lite.Reranker or the
    session.RerankSession a search runs) on each caption's top `k`: {"total_ms", "match_ms", "hub_ms",
    "exemplar_ms"}, median / p95 over `captions` after a warm-up of 5. The candidates are `k` real photo vectors
    (for the hubness prior and the exemplar term) and random patch tokens in the stored format (float16,
    the checkpoint's projection), as search reads them from a library."""
    from xmodal.engine.rerank.banks import TextTokens

    spec = scorer.projector.spec
    tokens = np.random.default_rng(0).standard_normal((k, spec.tokens, spec.dim)).astype(np.float16)
    vectors = np.ascontiguousarray(np.resize(photo_vectors, (k, photo_vectors.shape[1])), np.float32)
    parts: dict[str, list[float]] = {"total_ms": [], "match_ms": [], "hub_ms": [], "exemplar_ms": []}
    for c in captions:
        _, st, mask, _ = encoder.encode_text_states([c])
        text = TextTokens(st[:1], mask[:1])
        t0 = time.perf_counter()
        scorer.score(text, tokens.astype(np.float32))
        t1 = time.perf_counter()
        if scorer.hub is not None:
            scorer.hub_prior(vectors, "t2i")
        t2 = time.perf_counter()
        if scorer.hub is not None and scorer.beta["t2i"]:
            scorer.exemplar_scores(text, vectors)
        t3 = time.perf_counter()
        for name, secs in (("total_ms", t3 - t0), ("match_ms", t1 - t0), ("hub_ms", t2 - t1), ("exemplar_ms", t3 - t2)):
            parts[name].append(secs)
    return {name: ms(v[5:] or v) for name, v in parts.items()}


def bench_speed(encoder: Encoder, photos: Path, scale: int = 10_000, index_runs: int = 3, data: Path | None = None,
                n_queries: int = 200, distribution: str = "mixture", budget: int | None = BUDGET_BYTES,
                workdir: Path | None = None) -> dict:
    """Every figure of `xmodal bench speed`: indexing `photos` end to end against the forward-pass rates, then
    `run_scale` at `scale` simulated photos, fitted to the Flickr8k photos at `data` (or, with data None,
    to `photos`), the scale figures flattened to the top level with the full run under "scale_run"."""
    load_start = os.getloadavg()[0]  # other processes' CPU use skews every timing: reported with them
    index_img_s, real, _ = index_rate(encoder, photos, runs=index_runs)
    forward_img_s = forward_rate(encoder)
    forward_cl_img_s = forward_rate(encoder, channels_last=True)
    onnx_rates = onnx_forward_rates(encoder)
    forward_onnx_img_s = max(onnx_rates.values()) if onnx_rates else float("nan")
    fastest = max((r for r in (forward_img_s, forward_cl_img_s, forward_onnx_img_s) if np.isfinite(r)),
                  default=float("nan"))
    base: Base = base_embeddings(encoder, data, photos, n_queries=n_queries, photo_vectors=real)
    logger.info("distribution fitted to %s", base.source)
    stages = stage_latencies(encoder, base.captions, base.images)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        run = run_scale(scale, base, Path(tmp), budget=budget, distribution=distribution, model=encoder.name,
                        stage_ms=stages)
    rerank = stages["rerank32_ms"]
    return {
        "index_img_s": _num(index_img_s), "forward_img_s": _num(fastest), "forward_eager_img_s": _num(forward_img_s),
        "forward_channels_last_img_s": _num(forward_cl_img_s), "forward_onnx_img_s": _num(forward_onnx_img_s),
        "forward_onnx_session_img_s": _num(onnx_rates.get("session", float("nan"))),
        "forward_onnx_lanes_img_s": _num(onnx_rates.get("lanes", float("nan"))),
        "index_vs_fastest": round(index_img_s / fastest, 3) if np.isfinite(fastest) and fastest else None,
        "photos": len(real), "index_runs": index_runs, "scale": scale,
        "factory": run["factory"], "search_params": run["tuning"]["params"],
        "query_ms_p50": run["query_ms_p50"], "query_ms_p95": run["query_ms_p95_stages"],
        "encode_ms_p50": stages["encode_ms"]["p50"], "ann_ms_p50": run["ann_ms"]["p50"],
        "fetch_ms_p50": run["fetch_ms"]["p50"],
        "exact_ms_p50": next(p["p50"] for name, p in run["peers"].items() if name.startswith("faiss Flat")),
        "rerank_ms_p50": rerank["p50"] if rerank else None,
        "query_ms_p50_with_rerank": run["query_ms_p50_with_rerank"],
        "ann_recall_at_10": run["ann_recall_at_10"], "speedup_vs_exact": run["speedup_vs_exact"],
        "rss_mb": run["search_process"]["rss_mb"], "rss_index_store_mb": run["search_process"]["rss_index_store_mb"],
        "search_process_models": run["search_process"]["models"],
        "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **machine(), "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "model": encoder.name, "budget_bytes": budget,
        "distribution": distribution, "simulated": DESCRIPTIONS[distribution], "distribution_source": base.source,
        "queries": {"tune": len(base.tune_texts), "measure": len(base.test_texts)},
        "scale_run": run,
    }
