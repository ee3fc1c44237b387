"""Run every benchmark and regenerate benchmarks/RESULTS.md with its tables and PNG plots, in one command:

    make bench                                      # = .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/b    # CI smoke: tiny sizes, another folder
    .venv/bin/python benchmarks/run_all.py --render                # only re-render from the saved JSON

Steps (each writes its raw JSON next to RESULTS.md): the web load test (load_test.py), dev recall of the
reranker against the rerank depth K (`xmodal bench recall --rerank`), reranking latency against K
(rerank_latency.py), speed at a small scale (`xmodal bench speed`), JPEG draft decoding (decode_draft.py),
runtimes and end-to-end indexing (runtimes.py), and speed at scale (scale.py: 10k, 100k, 1M;
scale_10m.py: 10M, about 25 minutes of the 70, and 45 GB of disk for its store). Needs the Flickr8k data
beside the repository and the bench extra (matplotlib, hnswlib).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
SAMPLES = REPO / "data" / "samples"
PY = sys.executable
XMODAL = [PY, "-m", "xmodal.engine.cli"]


def sh(cmd: list[str], out_json: Path | None = None) -> dict:
    print("$", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    done = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    text = done.stdout.strip()
    data = json.loads(text[text.index("{"):]) if text and "{" in text else {}
    if out_json is not None and data:
        out_json.write_text(json.dumps(data, indent=2) + "\n")
    return data


def run(out: Path, quick: bool) -> None:
    dev_split = FLICKR8K / "splits" / "dev.txt"
    if quick:  # a 60-photo slice of dev, so that every step runs in seconds
        tmp = Path(tempfile.mkdtemp())
        dev_split = tmp / "dev60.txt"
        dev_split.write_text("\n".join((FLICKR8K / "splits" / "dev.txt").read_text().split()[:60]) + "\n")
    ks = ["8", "16", "32"] if quick else ["8", "16", "32", "64", "128"]
    sh([PY, HERE / "load_test.py", "--no-write", "--duration", "3" if quick else "30",
        "--clients", "4" if quick else "20"], out / "load_test.json")
    sh(XMODAL + ["bench", "recall", FLICKR8K, "--split", dev_split, "--rerank",
                 *[a for k in ks for a in ("--rerank-k", k)], "--json"], out / "rerank_dev.json")
    sh([PY, HERE / "rerank_latency.py", "--queries", "20" if quick else "200", "--json",
        *[a for k in ks for a in ("--rerank-k", k)]], out / "rerank_latency.json")
    sh(XMODAL + ["bench", "speed", "--photos", FLICKR8K / "originals", "--scale", "2000" if quick else "100000",
                 "--json"], out / "speed_small.json")
    sh([PY, HERE / "decode_draft.py", "--n", "3" if quick else "48", *(["--qualities", "75"] if quick else []), "--json"],
       out / "decode_draft.json")
    sh([PY, HERE / "runtimes.py", "--repeats", "2" if quick else "7", "--json",
        *(["--photos", SAMPLES, "--copies", "2"] if quick else ["--dev", "--variants", "u8u8,s8-reduce-range"])],
       out / "runtimes.json")
    scales = ["2000", "20000"] if quick else ["10000", "100000", "1000000"]
    base = ["--base", "dev"] if quick else []  # quick: fit to the 1,000 dev photos (train's 6,000 take minutes)
    subprocess.run([PY, HERE / "scale.py", "--scales", *scales, "--queries", "40" if quick else "200", *base,
                    "--json", out / "scale.json"], cwd=REPO, check=True)
    if not quick:  # the worst case: one Gaussian, no cluster structure
        subprocess.run([PY, HERE / "scale.py", "--scales", *scales, "--distribution", "gaussian",
                        "--json", out / "scale_gaussian.json"], cwd=REPO, check=True)
    quick_10m = ["--n", "60000", "--queries", "40", "--timed-exact", "3", "--piece", "25000"]  # streamed in pieces
    subprocess.run([PY, HERE / "scale_10m.py", *(quick_10m if quick else []), "--json", out / "scale_10m.json"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------- plots
def plots(out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]): no plots", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec, lat = _load(out / "rerank_dev.json"), _load(out / "rerank_latency.json")
    if rec and lat:
        ks = sorted(int(k) for k in rec["rerank"])
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.0), dpi=120)
        for d, c in (("t2i", "tab:blue"), ("i2t", "tab:orange")):
            a.plot(ks, [rec["rerank"][str(k)][d]["R@1"] for k in ks], "o-", color=c, label=f"{d} reranked")
            if rec.get("hub"):
                a.plot(ks, [rec["hub"][str(k)][d]["R@1"] for k in ks], "x:", color=c, label=f"{d} hubness only")
            if rec.get("exemplar") and d == "t2i":
                a.plot(ks, [rec["exemplar"][str(k)][d]["R@1"] for k in ks], "+-.", color=c,
                       label=f"{d} hubness + exemplar, no cross-attention")
            a.axhline(rec[d]["R@1"], color=c, ls="--", lw=1, label=f"{d} dual encoder")
        a.set(xscale="log", xlabel="rerank depth K", ylabel="R@1 (%)", title="Flickr8k dev R@1")
        a.set_xticks(ks, [str(k) for k in ks])
        a.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        lk = sorted(int(k) for k in lat["rerank"])
        b.plot(lk, [lat["rerank"][str(k)]["added_ms_p50"] for k in lk], "o-", label="median")
        b.plot(lk, [lat["rerank"][str(k)]["added_ms_p95"] for k in lk], "s--", label="p95")
        b.set(xscale="log", xlabel="rerank depth K", ylabel="ms added to a text query", title="Rerank latency")
        b.set_xticks(lk, [str(k) for k in lk])
        b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "rerank_k.png")
        plt.close(fig)
    sc = _load(out / "scale.json")
    if sc and sc.get("scales"):
        ns = [s["n"] for s in sc["scales"]]
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.0), dpi=120)
        names = [p for p in sc["scales"][0]["peers"]]
        for name in names:
            label = "xmodal (chosen index)" if name.startswith("xmodal") else name
            a.plot(ns, [s["peers"][next(p for p in s["peers"] if p.split()[0] == name.split()[0])]["p50"]
                        for s in sc["scales"]], "o-", label=label)
        a.set(xscale="log", yscale="log", xlabel="photos", ylabel="search ms (median, 1 query)",
              title="Nearest-neighbour search")
        a.legend(fontsize=7)
        b.plot(ns, [s["search_process"]["rss_mb"] for s in sc["scales"]], "o-", label="search process RSS (MB)")
        b.plot(ns, [s["disk_bytes_per_photo"]["total"] / 1024 for s in sc["scales"]], "s-", label="disk KB / photo")
        b.set(xscale="log", yscale="log", xlabel="photos", title="Memory and disk")
        b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "scale.png")
        plt.close(fig)


RUNTIME_NAMES = {"eager": "PyTorch eager", "channels_last": "PyTorch channels-last",
                 "onnxruntime": "ONNX Runtime float32, one session", "onnxruntime_lanes": "ONNX Runtime float32, lanes",
                 "int8": "ONNX Runtime int8, one session", "int8_lanes": "ONNX Runtime int8, lanes"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# ------------------------------------------------------------------------------------------- report
def render(out: Path) -> str:
    lt, rec, lat = _load(out / "load_test.json"), _load(out / "rerank_dev.json"), _load(out / "rerank_latency.json")
    sp, sc = _load(out / "speed_small.json"), _load(out / "scale.json")
    r = ["# Benchmark results", "",
         f"Written by `benchmarks/run_all.py` on {date.today()} from the JSON files beside it (`make bench` reruns "
         "every script named below and rewrites them; this edition's JSON came from those scripts run one by one "
         f"on the same day). Machine: {sc.get('machine') or lat.get('machine', '?')}, no GPU.", ""]
    if lt:
        r += ["## Web API load test", "",
              f"`benchmarks/load_test.py`: {lt.get('clients')} concurrent clients, text queries "
              f"(`GET /api/search`, reranked by default), {lt.get('duration_s', lt.get('seconds', '?'))} s, model "
              f"`{lt.get('model')}`, uvicorn (1 worker).", "",
              "| requests | errors | requests/s | median ms | p95 ms |", "| ---: | ---: | ---: | ---: | ---: |",
              f"| {lt.get('requests')} | {lt.get('errors')} | {lt.get('rps')} | {lt.get('p50_ms')} | {lt.get('p95_ms')} |",
              "", "Engine calls are serialised, so latency under load is mostly queueing (about clients / rps). Runs "
              "vary by about 10% (15 s runs gave 45 and 47 requests/s); before reranking was on by default the same "
              "test gave 72 requests/s.", ""]
    if rec:
        r += ["## Cross-attention reranker: dev recall and latency against the rerank depth K", "",
              f"Flickr8k dev ({rec.get('n_images')} photos, {rec.get('n_texts')} captions): each caption's top K photos "
              "and each photo's top K captions reordered by `(cosine - hubness prior) + beta * exemplar + alpha * "
              "match score` (match: the cross-attention matcher's score; exemplar, text -> image only: the photo's "
              "cosine with the photos of the train captions nearest to the query; alpha and beta per direction, "
              "stored in the checkpoint with the hubness and exemplar banks); ranks beyond K keep the dual order. "
              "The \"hubness correction alone\" rows reorder by `cosine - hubness prior` only, the \"no "
              "cross-attention\" rows add the exemplar term: what the cross-attention model adds is the "
              "difference between those rows and the reranked row of the same K.", "",
              "| | alpha t2i / i2t | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
              "| dual encoder alone | | " + " | ".join(f"{rec[d][m]:.2f}" for d in ("t2i", "i2t")
                                                     for m in ("R@1", "R@5", "R@10")) + " |"]
        for k, v in sorted(rec["rerank"].items(), key=lambda kv: int(kv[0])):
            a = v["alpha"]
            h = rec.get("hub", {}).get(k)
            if h:
                r.append(f"| hubness correction alone, K = {k} | | " + " | ".join(
                    f"{h[d][m]:.2f}" for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10")) + " |")
            e = rec.get("exemplar", {}).get(k)
            if e:
                r.append(f"| hubness + exemplar (beta {e['beta']}), no cross-attention, K = {k} | 0 / - | " + " | ".join(
                    f"{e['t2i'][m]:.2f}" for m in ("R@1", "R@5", "R@10")) + " | | | |")
            b = v.get("beta", {}).get("t2i")
            r.append(f"| reranked, K = {k}" + (f", beta {b}" if b else "") + f" | {a['t2i']} / {a['i2t']} | " + " | ".join(
                f"{v[d][m]:.2f}" for d in ("t2i", "i2t") for m in ("R@1", "R@5", "R@10")) + " |")
        r.append("")
    if lat:
        r += [f"Latency ({lat['queries']} dev captions as text queries over {lat['library_images']} indexed photos, "
              f"k = {lat['k']}; every K and the plain query run back to back per query). Plain query: median "
              f"{lat['plain_ms_p50']:.1f} ms, p95 {lat['plain_ms_p95']:.1f} ms.", "",
              "| K | query median ms | query p95 ms | added median ms | added p95 ms | rerank stage median ms |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k, v in sorted(lat["rerank"].items(), key=lambda kv: int(kv[0])):
            r.append(f"| {k} | {v['query_ms_p50']:.1f} | {v['query_ms_p95']:.1f} | {v['added_ms_p50']:.1f} | "
                     f"{v['added_ms_p95']:.1f} | {v['stage_ms_p50']:.1f} |")
        i2t = lat.get("image_to_text")
        if i2t:
            r += ["", f"Image -> text (\"more like this\" for texts: an indexed photo against {i2t['texts']:,} captions, "
                  f"{i2t['queries']} photos): without rerank {i2t['plain_ms_p50']:.1f} ms median. Candidate texts' "
                  "token states are stored when the corpus is indexed; computing them at query time instead "
                  "(a MiniLM pass over the K texts) would add the last column:", "",
                  "| K | query median ms | query p95 ms | fusion ms | MiniLM over the K texts, if not stored, ms |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
            for k, v in sorted(i2t["rerank"].items(), key=lambda kv: int(kv[0])):
                r.append(f"| {k} | {v['query_ms_p50']:.1f} | {v['query_ms_p95']:.1f} | {v['fusion_ms_p50']:.1f} | "
                         f"{v['text_tokens_ms_p50']:.1f} |")
        r += ["", "![dev R@1 and added latency against K](rerank_k.png)", ""]
    if sp:
        r += ["## Speed at a small scale (`xmodal bench speed`)", "",
              f"{sp['photos']} real photos indexed end to end (median of {sp.get('index_runs', 1)} runs into fresh "
              f"libraries, the encoder loaded and warmed up first); {sp['scale']:,} vectors simulated "
              f"({sp['simulated']}; fitted to {sp.get('distribution_source', 'the indexed photos')}) and measured "
              "by the same code as `benchmarks/scale.py` (`xmodal.engine.eval.scale.run_scale`).", "",
              "| figure | value |", "| --- | ---: |",
              f"| indexing, end to end (decode, resize, embed, patch tokens, store) | {sp['index_img_s']} images/s |",
              f"| image tower + head forward pass alone, batch 16, PyTorch eager | "
              f"{sp.get('forward_eager_img_s', sp['forward_img_s'])} images/s |",
              f"| the same, channels-last memory format | {sp.get('forward_channels_last_img_s')} images/s |",
              f"| the same, ONNX Runtime, one session on every core | {sp.get('forward_onnx_session_img_s')} images/s |",
              f"| the same, ONNX Runtime, one single-threaded session per core (what indexing uses) | "
              f"{sp.get('forward_onnx_lanes_img_s')} images/s |",
              f"| end to end / the fastest forward pass above (float32; int8 below) | {sp.get('index_vs_fastest')} |",
              f"| index chosen | {sp['factory']} {sp['search_params']} |",
              f"| text query, encode + ANN + fetch, median / sum of the stages' p95 | {sp['query_ms_p50']} / "
              f"{sp['query_ms_p95']} ms |",
              f"| rerank of the top 32, median | {sp['rerank_ms_p50']} ms |",
              f"| ANN recall@10 against exact search | {sp['ann_recall_at_10']} |",
              f"| ANN speed-up over exact search | {sp['speedup_vs_exact']}x |",
              f"| resident memory of a fresh search process (index, store, models) | {sp['rss_mb']} MB |", ""]
    rt = _load(out / "runtimes.json")
    if rt:
        dev = "dev_r1" in "".join(rt)

        def r1(name):
            d = rt.get(f"{name}_dev_r1")
            return f"{d['t2i']} / {d['i2t']}" if d else "not measured"

        r += ["## The image tower on each runtime, and indexing end to end on each (`benchmarks/runtimes.py`)", "",
              f"Forward pass alone: pixels -> embedding, batch {rt['batch']} of real photos, images/s (median), side "
              f"by side in one run on {rt['machine']}{', ' + rt['cpu'] if 'cpu' in rt else ''}. ONNX Runtime {rt['onnxruntime']} runs the indexing graph "
              f"two ways: one session on {rt['torch_threads']} threads, and {rt['lanes']} single-threaded sessions "
              "(\"lanes\") running batches concurrently, measured before and after the indexing runs (the higher "
              f"counts). End to end: {rt.get('indexed_photos', 100)} photos, the Flickr8k full-size originals "
              "as distinct copies (a JPEG comment names each; same pixels), indexed by `xmodal index`'s pipeline "
              "(decode, resize, embed, patch tokens, store), median of 3 runs.", "",
              "| runtime | forward, one session | forward, lanes | indexing end to end | end to end / fastest "
              "forward (target 80%) | end to end / the same graph's lanes | dev R@1 t2i / i2t |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
              f"| PyTorch eager (NCHW) | {rt['eager_img_s']} | | | | | |",
              f"| PyTorch channels-last | {rt['channels_last_img_s']} | | | | | |",
              f"| ONNX Runtime float32 (the default) | {rt['onnxruntime_img_s']} | {rt['onnxruntime_lanes_img_s']} | "
              f"{rt['onnxruntime_index_img_s']} | {rt['onnxruntime_index_vs_fastest']:.0%} | "
              f"{rt['onnxruntime_index_img_s'] / rt['onnxruntime_lanes_img_s']:.0%} | {r1('onnxruntime')} |",
              (f"| ONNX Runtime int8 (`XMODAL_IMAGE_RUNTIME=int8`; variant {rt.get('int8_variant', 's8')}) | "
               f"{rt['int8_img_s']} | {rt['int8_lanes_img_s']} | {rt['int8_index_img_s']} | "
               f"{rt['int8_index_vs_fastest']:.0%} | {rt['int8_index_img_s'] / rt['int8_lanes_img_s']:.0%} | "
               f"{r1('int8')} |" if "int8_img_s" in rt else
               "| ONNX Runtime int8 (`XMODAL_IMAGE_RUNTIME=int8`) | unavailable on this CPU: every variant drifts "
               "from float | | | | | |"), "",
              f"Fastest forward pass: **{RUNTIME_NAMES.get(rt['fastest'], rt['fastest'])}, {rt['fastest_img_s']} "
              "images/s**"
              + (f" (int8 costs {rt['int8_dev_r1_cost']} points of dev R@1 at most, inside the 0.5 allowed, so it "
                 "counts)" if dev and rt.get("int8_qualifies") else "") + ". Target: indexing end to end at 80% "
              "of it. Largest difference from eager's embeddings: channels-last "
              f"{rt['channels_last_max_abs_diff']:.1e}, ONNX Runtime float32 {rt['onnxruntime_max_abs_diff']:.1e}"
              + (f"; int8 cosine to eager at least {rt['int8_min_cosine']:.3f}." if "int8_min_cosine" in rt else
                 f". int8: {rt.get('int8_unavailable', 'not measured')}."), ""]
        variants = [k[:-len("_calibration_cosine")] for k in rt if k.endswith("_calibration_cosine")
                    and k.startswith("int8_")]
        if variants:
            r += [f"Each int8 variant made as it is, on {rt.get('cpu', rt['machine'])} (VNNI: "
                  f"{', '.join(rt.get('vnni', [])) or 'none'}); the CPU keeps the first in `VARIANTS` whose "
                  "embeddings of the 56 calibration inputs stay within cosine 0.98 (median) and 0.85 (worst) of "
                  "float's. Here it keeps " + (f"**{rt['int8_variant']}**." if "int8_variant" in rt else "none."), "",
                  "| int8 variant | cosine to float, median / worst | forward, one session | forward, lanes | "
                  "dev R@1 t2i / i2t | dev R@1 cost (points) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for v in variants:
                c = rt[f"{v}_calibration_cosine"]
                r.append(f"| {v[len('int8_'):]} | {c['median']:.3f} / {c['worst']:.3f} | {rt[f'{v}_img_s']} | "
                         f"{rt[f'{v}_lanes_img_s']} | {r1(v)} | {rt.get(f'{v}_dev_r1_cost', '')} |")
            r.append("")
    dd = _load(out / "decode_draft.json")
    if dd:
        r += ["## JPEG draft decoding of 12-megapixel photos (`benchmarks/decode_draft.py`)", "",
              f"{dd['photos']} Flickr8k originals upscaled to 12 MP JPEGs (quality 92). Decoding as `xmodal index` "
              f"does (libjpeg draft mode, never below 224 px; {dd['draft_size'][0]}x{dd['draft_size'][1]} out) takes "
              f"{dd['draft_ms_p50']} ms per photo (median) against {dd['full_ms_p50']} ms for a full decode: "
              f"**{dd['speedup']}x faster** (target 4x: {'met' if dd['speedup'] >= 4 else '**not met**'}). libjpeg "
              f"alone, on bytes in memory: {dd.get('libjpeg_draft_ms_p50')} against {dd.get('libjpeg_full_ms_p50')} ms, "
              f"{dd.get('libjpeg_speedup')}x. A draft decode still entropy-decodes every coefficient of the "
              f"{dd.get('file_mb_mean')} MB file (only the inverse DCT, upsampling and colour conversion shrink with the "
              "scale), which bounds the speed-up; a full-size decode copied once more before 2026-11-29 made it read "
              "4.6x. From file to the model's 224 x 224 input (decode and the encoder's resize): "
              f"{dd.get('to_input_draft_ms_p50')} against {dd.get('to_input_full_ms_p50')} ms, {dd.get('to_input_speedup')}x. "
              "Lite embeddings of the two decodes: cosine median "
              f"{dd['cosine_median']}, minimum {dd['cosine_min']}. Indexing these 12 MP photos end to end (reading "
              f"and hashing the files, draft decoding, embedding, patch tokens, store): **{dd.get('index_img_s')} "
              "images/s**.", ""]
        if dd.get("by_quality"):
            r += ["The bound moves with the bits per pixel that must be entropy-decoded: the same photos saved at "
                  "other JPEG qualities (75 is libjpeg's default; cameras use about 90 to 97, and a real sensor's "
                  "noise makes their files larger still than these smooth upscaled ones):", "",
                  "| JPEG quality | MB per file | bits per pixel | draft decode ms | full decode ms | speed-up |",
                  "| --- | --- | --- | --- | --- | --- |"]
            r += [f"| {q['quality']} | {q['file_mb_mean']} | {q['bits_per_pixel']} | {q['draft_ms_p50']} | "
                  f"{q['full_ms_p50']} | {q['speedup']}x |" for q in dd["by_quality"]]
            r += [""]
    if sc and sc.get("scales"):
        r += ["## Speed at scale (`benchmarks/scale.py`)", "",
              f"{sc['queries']} real text queries (dev captions), a quarter used to tune the index, the rest measured. "
              f"Index chosen under a {sc['budget_bytes'] / 1e9:.1f} GB memory budget. Single-query latencies, median / "
              f"p95. Query = encode ({sc['encode_ms']['p50']:.1f} ms) + ANN + metadata fetch; rerank of the top 32 adds "
              f"{sc['rerank32_ms']['p50']:.1f} ms (its cost does not depend on the collection size).", "",
              "Collections are drawn to resemble the lite embeddings of "
              f"{sc.get('base_photos', 1000):,} real photos (renormalised): **clustered** (a Gaussian mixture: k-means "
              "centres, one per 5 photos, and the pooled within-cluster covariance; still more spread out than the "
              "real photos: nearest-neighbour cosine 0.57 against 0.64 at equal size), and a **single Gaussian** with "
              "the real mean and covariance (no clusters at all: a worst case for every ANN method).", ""]
        r += _scale_table(sc, "clustered (Gaussian mixture)")
        r += _bench_speed_1m(_load(out / "bench_speed_1m.json"))
    gs = _load(out / "scale_gaussian.json")
    if gs and gs.get("scales"):
        r += _scale_table(gs, "single Gaussian (worst case)")
    s10 = _load(out / "scale_10m.json")
    if s10 and s10.get("scale"):
        r += _scale_10m(s10)
    if sc and sc.get("scales"):
        r += ["![latency, memory and disk against the collection size (clustered collections)](scale.png)", ""]
    notes = HERE / "NOTES.md"
    if notes.exists():
        r += [notes.read_text().strip(), ""]
    return "\n".join(r)


def _scale_table(sc: dict, title: str) -> list[str]:
    r = [f"### {title}", "",
         "| photos | index (params) | ANN ms | recall@10 | vs exact | vs NumPy | query ms | + rerank 32 | "
         "search RSS MB | disk KB/photo |",
         "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in sc["scales"]:
        params = ", ".join(f"{k} {v}" for k, v in s["tuning"]["params"].items()) or "exact"
        r.append(f"| {s['n']:,} | {s['factory']} ({params}) | {s['ann_ms']['p50']:.2f} / {s['ann_ms']['p95']:.2f} | "
                 f"{s['ann_recall_at_10']:.3f} | {s['speedup_vs_exact']}x | {s['speedup_vs_numpy']}x | "
                 f"{s['query_ms_p50']:.1f} | {s['query_ms_p50_with_rerank']:.1f} | "
                 f"{s['search_process']['rss_mb']:.0f} | {s['disk_bytes_per_photo']['total'] / 1024:.1f} |")
    r += ["", "Peers on the same vectors and queries (median / p95 ms, recall@10 against exact):", "",
          "| photos | " + " | ".join("xmodal (chosen index)" if p.startswith("xmodal") else p
                                   for p in sc["scales"][0]["peers"]) + " |",
          "| ---: |" + " ---: |" * len(sc["scales"][0]["peers"])]
    for s in sc["scales"]:
        r.append(f"| {s['n']:,} | " + " | ".join(f"{p['p50']:.2f} / {p['p95']:.2f} (r {p['recall_at_10']:.3f})"
                                                for p in s["peers"].values()) + " |")
    r += ["", "Disk per photo: " + "; ".join(
        f"{s['n']:,}: index {s['disk_bytes_per_photo']['index']:.0f} B, store {s['disk_bytes_per_photo']['store']:.0f} B "
        f"(the vector is kept in the row too), patch tokens {s['disk_bytes_per_photo']['patch_tokens']} B"
        for s in sc["scales"]) + ".", ""]
    return r


def _bench_speed_1m(b: dict) -> list[str]:
    """One line for `xmodal bench speed --scale 1000000 --json` (bench_speed_1m.json), the same code as the table."""
    if not b:
        return []
    load = b.get("load_average_1min", {})
    params = ", ".join(f"{k} {v}" for k, v in b["search_params"].items()) or "exact"
    busy = (" (other jobs on the machine)"  # the benchmark's own threads count in the load up to `cores`
            if max(load.get("start") or 0, load.get("end") or 0) > b["cores"] + 1 else "")
    return [f"`xmodal bench speed --scale 1000000 --json` (the same code, `run_scale`; [bench_speed_1m.json]"
            f"(bench_speed_1m.json)) on {b['cpu']}, {b['cores']} cores, 1-minute load average {load.get('start')} "
            f"at the start and {load.get('end')} at the end{busy}: {b['factory']} ({params}), ANN recall@10 "
            f"{b['ann_recall_at_10']}, "
            f"{b['speedup_vs_exact']}x exact ({b['ann_ms_p50']} against {b['exact_ms_p50']} ms), text query "
            f"{b['query_ms_p50']} ms median of which encoding {b['encode_ms_p50']} ms (+ rerank {b['rerank_ms_p50']} ms), "
            f"search process {b['rss_mb']} MB (the benchmark process itself peaked at {b.get('bench_peak_rss_mb')} MB).",
            ""]


def _scale_10m(s10: dict) -> list[str]:
    s = s10["scale"]
    params = ", ".join(f"{k} {v}" for k, v in s["tuning"]["params"].items()) or "exact"
    peers = s["peers"]
    timed = peers[next(p for p in peers if "Flat" in p)]["queries"]
    r = [f"### {s['n']:,} photos, clustered (`benchmarks/scale_10m.py`)", "",
         "The raw vectors of 10M photos (20.5 GB as float32) do not fit in this machine's 24 GB beside the index "
         "being built, so they are held as float16 and every consumer sees the same float32 values converted back; "
         "exact search (the truth, and the FAISS Flat and NumPy timings) streams them in 1M pieces, a query's time "
         f"being the sum over the pieces (a full scan, measured on {timed} "
         "queries); hnswlib is left out (its graph over 10M raw vectors needs more than 24 GB). The index is trained "
         f"on 200,000 of the vectors. Build {s['build_s']:.0f} s, tuning {s['tuning']['seconds']:.0f} s, store "
         f"{s['store_build_s']:.0f} s. Tuned on {s10['queries'] // 4} real text queries and 200 of the vectors, "
         f"measured on the other {s10['queries'] - s10['queries'] // 4} text queries: tuning "
         + ("reached" if s['tuning'].get('reached', True) else "**could not reach**")
         + f" recall@10 0.95 on its own queries (it got {s['tuning']['recall_at_k']:.3f}, the lower of the two query "
         "families).", "",
         "| photos | index (params) | ANN ms | recall@10 | vs exact | vs NumPy | query ms | + rerank 32 | "
         "search RSS MB | disk KB/photo |",
         "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
         f"| {s['n']:,} | {s['factory']} ({params}) | {s['ann_ms']['p50']:.2f} / {s['ann_ms']['p95']:.2f} | "
         f"{s['ann_recall_at_10']:.3f} | {s['speedup_vs_exact']}x | {s['speedup_vs_numpy']}x | "
         f"{s['query_ms_p50']:.1f} | {s['query_ms_p50_with_rerank']:.1f} | {s['search_process']['rss_mb']:.0f} | "
         f"{s['disk_bytes_per_photo']['total'] / 1024:.1f} |", "",
         "Peers (median / p95 ms): " + "; ".join(f"{name} {p['p50']:.1f} / {p['p95']:.1f}" for name, p in peers.items())
         + f". Disk per photo: index {s['disk_bytes_per_photo']['index']:.0f} B, store "
         f"{s['disk_bytes_per_photo']['store']:.0f} B, patch tokens {s['disk_bytes_per_photo']['patch_tokens']} B.", ""]
    return r


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CI smoke run)")
    ap.add_argument("--render", action="store_true", help="only re-render RESULTS.md and the plots")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for the JSON, plots and RESULTS.md")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.render:
        if not (FLICKR8K / "captions.txt").exists():
            raise SystemExit(f"the benchmarks need the Flickr8k data at {FLICKR8K}")
        run(args.out, args.quick)
    plots(args.out)
    (args.out / "RESULTS.md").write_text(render(args.out))
    print(f"wrote {args.out / 'RESULTS.md'}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
