"""Duplicate finding (`xmodal duplicates`): pairwise precision and recall on a generated set of Flickr8k dev
photos with edited copies, and the time to build candidate groups over 1M simulated vectors.

    python benchmarks/duplicates.py [--data ../shared/data/flickr8k] [--n 1000000] [--out benchmarks/duplicates.json]

Quality. The dev photos are split in two halves, "tune" and "report"; each half becomes its own library:
* sources: each gets 1 or 2 edited copies, the edit drawn in turn from resize (to 60%), JPEG re-encode (quality
  35 or 60), slight crop (5% off each side), brighten (x1.25) and colour shift (red +18, blue -18);
* exact copies: a few files copied byte for byte;
* bursts: two crops of one photo (70% of the width each) that overlap by 60%: "similar", NOT duplicates;
* distinct photos with no copy;
* near-uniform images (blank greys, black frames with faint noise): never duplicates of each other.
Each library is indexed with the lite model (`index_folders`, the product's path) and searched with
`find_duplicates` (the product's path). The truth: photos made from one source photo (the source, its edited
copies, its exact copies) are duplicates of each other; nothing else is. Pairwise precision and recall are over
all pairs of photos. The threshold is swept on "tune" (candidate pairs scored once); the default shipped
(engine/duplicates/confirm.py DEFAULT_THRESHOLD) is reported on "report".

Scale. `--n` vectors are drawn like the dev photos' lite embeddings (engine/eval/simulate.py, mixture), 1% of
them replaced by near copies of others (cosine ~0.95, the spread of edited copies measured above), put in
the index the product picks at that size (`IVF4096,SQ8`, nprobe 24 as tuned in benchmarks/scale.json), then
`candidate_pairs` (batched kNN, k=8) and `connected_groups` run over all of them; both timed (one run each;
the index build is timed apart). Confirmation reads files and is not part of the simulated figure: it costs a
decode per photo in a candidate pair (measured above on real files, per pair).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from xmodal.engine.eval.machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
EDITS = ("resize", "jpeg", "crop", "brighten", "colour")


def edit(im: Image.Image, kind: str, n: int) -> tuple[Image.Image, int]:
    """An edited copy -> (image, JPEG quality to save it at)."""
    w, h = im.size
    if kind == "resize":
        return im.resize((int(w * 0.6), int(h * 0.6)), Image.BICUBIC), 90
    if kind == "jpeg":
        return im, (35, 60)[n % 2]
    if kind == "crop":
        dx, dy = int(w * 0.05), int(h * 0.05)
        return im.crop((dx, dy, w - dx, h - dy)), 90
    if kind == "brighten":
        return ImageEnhance.Brightness(im).enhance(1.25), 90
    a = np.asarray(im, np.int16) + np.array([18, 0, -18], np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), 90


def burst(im: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Two crops 70% of the width wide, overlapping by 60% of a crop."""
    w, h = im.size
    cw = int(w * 0.7)
    shift = int(cw * 0.4)
    return im.crop((0, 0, cw, h)), im.crop((shift, 0, shift + cw, h))


def make_set(names: list[str], images: Path, out: Path, seed: int) -> dict[str, int | None]:
    """Writes the photos; returns {file name: family id (None: duplicates of nothing)}."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    truth: dict[str, int | None] = {}
    n = len(names)
    n_src, n_burst = int(n * 0.4), int(n * 0.15)
    e = 0
    for i, name in enumerate(names):
        im = Image.open(images / name).convert("RGB")
        stem = Path(name).stem
        if i < n_src:  # a source with 1 or 2 edited copies, and every 10th an exact copy
            shutil.copyfile(images / name, out / f"{stem}.jpg")
            truth[f"{stem}.jpg"] = i
            for c in range(1 + (i % 2)):
                kind = EDITS[e % len(EDITS)]
                e += 1
                copy, q = edit(im, kind, e)
                copy.save(out / f"{stem}-{kind}{c}.jpg", quality=q)
                truth[f"{stem}-{kind}{c}.jpg"] = i
            if i % 10 == 0:
                shutil.copyfile(images / name, out / f"{stem}-exact.jpg")
                truth[f"{stem}-exact.jpg"] = i
        elif i < n_src + n_burst:
            a, b = burst(im)
            a.save(out / f"{stem}-burstA.jpg", quality=90)
            b.save(out / f"{stem}-burstB.jpg", quality=90)
            truth[f"{stem}-burstA.jpg"] = truth[f"{stem}-burstB.jpg"] = None
        else:
            shutil.copyfile(images / name, out / f"{stem}.jpg")
            truth[f"{stem}.jpg"] = None
    for j in range(12):  # near-uniform: greys, and black frames with faint noise
        if j < 6:
            im = Image.new("RGB", (224, 224), (20 + 35 * j,) * 3)
        else:
            a = np.clip(rng.normal(6, 2, (224, 224, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(a)
        im.save(out / f"blank{j}.png")
        truth[f"blank{j}.png"] = None
    return truth


def truth_pairs(truth: dict[str, int | None]) -> set[frozenset]:
    fam: dict[int, list[str]] = {}
    for f, i in truth.items():
        if i is not None:
            fam.setdefault(i, []).append(f)
    return {frozenset(p) for files in fam.values() for p in combinations(sorted(files), 2)}


def group_pairs(groups: list[list[str]]) -> set[frozenset]:
    return {frozenset(p) for g in groups for p in combinations(sorted(g), 2)}


def pr(pred: set, true: set) -> dict:
    tp = len(pred & true)
    return {"precision": round(tp / len(pred), 4) if pred else 1.0, "recall": round(tp / len(true), 4) if true else 1.0,
            "predicted_pairs": len(pred), "true_pairs": len(true), "true_positives": tp}


def quality(half: str, names: list[str], data: Path, work: Path, seed: int, threshold: float | None) -> dict:
    from xmodal.engine.duplicates.candidates import DEFAULT_K, DEFAULT_MIN_SIMILARITY, candidate_pairs
    from xmodal.engine.duplicates.confirm import DEFAULT_THRESHOLD, fingerprint, pair_score
    from xmodal.engine.duplicates.groups import connected_groups
    from xmodal.engine.search.engine import SearchEngine
    from xmodal.indexer import index_folders
    from xmodal.indexer.ingest.decode import read_image
    from xmodal.indexer.storage.stored_vectors import StoredVectors

    photos, lib = work / f"{half}-photos", work / f"{half}-library"
    truth = make_set(names, data / "images", photos, seed)
    t0 = time.perf_counter()
    index_folders(lib, [photos], model="lite")
    index_s = time.perf_counter() - t0
    true = truth_pairs(truth)
    out: dict = {"photos": len(truth), "sources": len({v for v in truth.values() if v is not None}),
                 "true_pairs": len(true), "index_s": round(index_s, 1)}
    with SearchEngine(lib, reranker=None) as eng:
        store, index = eng.library.store, eng._index("images")
        name_of = {i: Path(p).name for i, p, _ in store.image_digests()}
        # cosines of true pairs and bursts (what the candidate floor must let through / may)
        _, ids, has = store.vector_state("images")
        vec = dict(zip(ids[has].tolist(), StoredVectors(store, "images", ids[has], index.dim).rows(ids[has])))
        by_name = {v: k for k, v in name_of.items()}
        cos_true = [float(vec[by_name[a]] @ vec[by_name[b]]) for a, b in map(sorted, true)]
        bursts = sorted(f for f in truth if "-burstA" in f)
        cos_burst = [float(vec[by_name[a]] @ vec[by_name[a.replace("burstA", "burstB")]]) for a in bursts]
        out["cosine_true_pairs"] = {"min": round(min(cos_true), 4), "p01": round(float(np.percentile(cos_true, 1)), 4),
                                    "median": round(statistics.median(cos_true), 4)}
        out["cosine_bursts"] = {"min": round(min(cos_burst), 4), "median": round(statistics.median(cos_burst), 4),
                                "max": round(max(cos_burst), 4)}
        # candidates once, then every pair scored: the threshold sweep
        t0 = time.perf_counter()
        cands = candidate_pairs(StoredVectors(store, "images", ids[has], index.dim, page=1024).pages(), index.search,
                                DEFAULT_K, DEFAULT_MIN_SIMILARITY)
        cand_s = time.perf_counter() - t0
        cand_names = {frozenset((name_of[int(a)], name_of[int(b)])) for a, b in zip(cands.a, cands.b)}
        out["candidates"] = {"pairs": len(cands), "recall_of_true_pairs": round(len(cand_names & true) / len(true), 4),
                             "seconds": round(cand_s, 3), "k": DEFAULT_K, "min_similarity": DEFAULT_MIN_SIMILARITY}
        digest = {i: d for i, _, d in store.image_digests()}
        prints, t0 = {}, time.perf_counter()
        for i in set(cands.a.tolist()) | set(cands.b.tolist()):
            prints[i] = fingerprint(read_image(str(photos / name_of[i]), target_size=256).image)
        fp_s = time.perf_counter() - t0
        out["fingerprint_ms_per_photo"] = round(1000 * fp_s / max(1, len(prints)), 2)
        scored = [(int(a), int(b), 1.0 if digest[int(a)] == digest[int(b)] else pair_score(prints[int(a)], prints[int(b)]))
                  for a, b in zip(cands.a, cands.b)]
        exact = [(ids_[0], o) for ids_ in _by_digest(digest).values() for o in ids_[1:]]
        sweep = {}
        for t in np.round(np.arange(0.3, 0.951, 0.05), 2):
            comps = connected_groups(exact + [(a, b) for a, b, s in scored if s >= t])
            sweep[f"{t:.2f}"] = pr(group_pairs([[name_of[i] for i in c] for c in comps]), true)
        out["sweep"] = sweep
        burst_scores = [s for a, b, s in scored if {name_of[a], name_of[b]} <= set(bursts) | {x.replace("burstA", "burstB") for x in bursts}
                        and name_of[a].split("-")[0] == name_of[b].split("-")[0]]
        out["burst_pair_scores"] = {"n": len(burst_scores), "max": round(max(burst_scores), 4) if burst_scores else None}
        true_scores = [s for a, b, s in scored if frozenset((name_of[a], name_of[b])) in true]
        out["true_pair_scores"] = {"min": round(min(true_scores), 4), "p05": round(float(np.percentile(true_scores, 5)), 4)}
        # the product's path at the shipped (or given) threshold
        t = DEFAULT_THRESHOLD if threshold is None else threshold
        t0 = time.perf_counter()
        report = eng.find_duplicates(t)
        out["find_duplicates_s"] = round(time.perf_counter() - t0, 2)
        got = group_pairs([[Path(p).name for p in g.paths] for g in report.groups])
        out["at_threshold"] = {"threshold": t, **pr(got, true), "groups": len(report.groups),
                               "exact_groups": sum(g.kind == "exact" for g in report.groups)}
        blanks = {f for f in truth if f.startswith("blank")}
        out["blank_images_grouped"] = sum(1 for g in report.groups for p in g.paths if Path(p).name in blanks)
        out["bursts_grouped"] = sum(1 for p in got if any("burst" in f for f in p))
    return out


def _by_digest(digest: dict[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, d in sorted(digest.items()):
        out.setdefault(d, []).append(i)
    return out


def scale(n: int, real: np.ndarray, work: Path, nprobe: int, seed: int = 0) -> dict:
    import faiss

    from xmodal.engine.duplicates.candidates import DEFAULT_K, DEFAULT_MIN_SIMILARITY, candidate_pairs
    from xmodal.engine.duplicates.groups import connected_groups
    from xmodal.engine.eval.simulate import simulate

    t0 = time.perf_counter()
    x = np.array(simulate(real, n, work / "sim.npy", "mixture", seed=seed), np.float32, copy=True)
    rng = np.random.default_rng(seed)
    n_copies = n // 100
    src = rng.choice(n, n_copies, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), n_copies, replace=False)
    noise = rng.standard_normal((n_copies, x.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = x[src] + 0.33 * noise  # cosine ~0.95 with the source: an edited copy
    x[dst] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    sim_s = time.perf_counter() - t0
    d = x.shape[1]
    t0 = time.perf_counter()
    index = faiss.index_factory(d, "IVF4096,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(x[rng.choice(n, min(n, 39 * 4096), replace=False)])  # 39 points a list: FAISS asks for that many
    for s in range(0, n, 100_000):
        index.add(x[s:s + 100_000])
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    build_s = time.perf_counter() - t0
    ids = np.arange(n, dtype=np.int64)
    pages = ((ids[s:s + 4096], x[s:s + 4096]) for s in range(0, n, 4096))
    t0 = time.perf_counter()
    cands = candidate_pairs(pages, index.search, DEFAULT_K, DEFAULT_MIN_SIMILARITY)
    knn_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = connected_groups(zip(cands.a.tolist(), cands.b.tolist()))
    group_s = time.perf_counter() - t0
    found = set(zip(cands.a.tolist(), cands.b.tolist()))
    injected = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist())}
    return {"vectors": n, "dim": d, "injected_near_copies": n_copies, "index": "IVF4096,SQ8", "nprobe": nprobe,
            "k": DEFAULT_K, "min_similarity": DEFAULT_MIN_SIMILARITY, "batch": 4096,
            "simulate_s": round(sim_s, 1), "index_build_s": round(build_s, 1),
            "candidate_knn_s": round(knn_s, 1), "grouping_s": round(group_s, 2),
            "candidates_plus_groups_s": round(knn_s + group_s, 1),
            "candidate_pairs": len(cands), "groups": len(groups),
            "injected_pairs_found": round(len(found & injected) / len(injected), 4)}


def confirm_cost(data: Path, scale_part: dict | None, pairs: int = 200_000, seed: int = 0) -> dict:
    """The confirmation step's cost, measured, and what it comes to at the scale part's size: one fingerprint
    per photo in a candidate pair (a draft-mode decode, pHash, thumbnail, sharpness; on the 100 full-size
    Flickr8k originals and on 224 px photos) plus one pair score per candidate pair (timed on `pairs` random
    pairs of real fingerprints). Simulated vectors have no pixels, so at 1M this is an estimate from measured
    unit costs, with every photo assumed to be in some candidate pair (the upper bound)."""
    from xmodal.engine.duplicates.confirm import fingerprint, pair_score
    from xmodal.engine.duplicates.finder import DECODE_SIZE
    from xmodal.indexer.ingest.decode import read_image

    def per_photo(paths: list[Path]) -> tuple[list, float]:
        prints, times = [], []
        for p in paths:
            t0 = time.perf_counter()
            prints.append(fingerprint(read_image(str(p), target_size=DECODE_SIZE).image))
            times.append(time.perf_counter() - t0)
        return prints, statistics.median(times)

    originals = sorted((data / "originals").glob("*.jpg"))
    small = [data / "images" / n for n in (data / "splits" / "dev.txt").read_text().split()[:100]]
    prints, orig_s = per_photo(originals)
    _, small_s = per_photo(small)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(prints), pairs), rng.integers(0, len(prints), pairs)
    t0 = time.perf_counter()
    for i, j in zip(a.tolist(), b.tolist()):
        pair_score(prints[i], prints[j])
    pair_s = (time.perf_counter() - t0) / pairs
    out = {"fingerprint_ms_per_photo_originals": round(1000 * orig_s, 2),
           "fingerprint_ms_per_photo_224px": round(1000 * small_s, 2),
           "pair_score_us": round(1e6 * pair_s, 2), "pairs_timed": pairs}
    if scale_part:
        n, cand = scale_part["vectors"], scale_part["candidate_pairs"]
        out["at_scale"] = {"photos": n, "candidate_pairs": cand,
                           "pair_scores_s": round(cand * pair_s, 1),
                           "fingerprints_s_originals_one_core": round(n * orig_s, 1),
                           "fingerprints_s_224px_one_core": round(n * small_s, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=FLICKR8K)
    ap.add_argument("--n", type=int, default=1_000_000, help="simulated vectors (0: skip the scale part, keep the last)")
    ap.add_argument("--nprobe", type=int, default=24)
    ap.add_argument("--photos", type=int, default=0, help="dev photos to use (0: all 1,000)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--confirm-cost-only", action="store_true",
                    help="measure the confirmation step's unit costs only (added to --out, the rest kept)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "duplicates.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = (args.data / "splits" / "dev.txt").read_text().split()
    if args.photos:
        names = names[:args.photos]
    load = os.getloadavg()[0]
    result = {"cpu": cpu_name(), "cores": os.cpu_count(),
              "machine": f"{'quiet' if load < 1.5 else 'shared with other jobs'} (load average {load:.1f} at the start)",
              "date": time.strftime("%Y-%m-%d"), "data": "Flickr8k dev (224 x 224 photos)"}
    prev = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.confirm_cost_only:
        prev["confirm_cost"] = confirm_cost(args.data, prev.get("scale"))
        prev["confirm_cost"]["date"] = time.strftime("%Y-%m-%d")
        args.out.write_text(json.dumps(prev, indent=2) + "\n")
        print(json.dumps(prev["confirm_cost"], indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_quality:
            half = len(names) // 2
            result["tune"] = quality("tune", names[:half], args.data, work, 1, args.threshold)
            print(json.dumps(result["tune"]["at_threshold"]), flush=True)
            result["report"] = quality("report", names[half:], args.data, work, 2, args.threshold)
            print(json.dumps(result["report"]["at_threshold"]), flush=True)
        else:
            result.update({k: prev[k] for k in ("tune", "report") if k in prev})
        if args.n:
            from xmodal.indexer.storage.library import Library

            lib = work / "report-library"
            if not lib.exists():
                raise SystemExit("the scale part fits the simulation to the report library: run without --skip-quality")
            with Library(lib) as L:
                _, ids, has = L.store.vector_state("images")
                from xmodal.indexer.storage.stored_vectors import StoredVectors

                real = StoredVectors(L.store, "images", ids[has], L.vector_index("images").dim).rows(ids[has])
            result["scale"] = scale(args.n, real, work, args.nprobe)
            print(json.dumps(result["scale"]), flush=True)
    if "confirm_cost" in prev:  # measured on its own (--confirm-cost-only): kept
        result["confirm_cost"] = prev["confirm_cost"]
    if not args.n and "scale" in prev:
        result["scale"] = prev["scale"]  # --n 0: the quality part again, the last scale run kept
        result["scale_date"] = prev.get("scale_date", prev.get("date"))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
