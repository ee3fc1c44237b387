"""A bounded load test of the web API on loopback: N concurrent clients send text queries for D seconds.

    .venv/bin/python benchmarks/load_test.py                    # 20 clients, 30 s, lite model on data/samples
    .venv/bin/python benchmarks/load_test.py --duration 5 --model toy --no-write
    .venv/bin/python benchmarks/load_test.py --screenshot benchmarks/screenshots/serve.png

The script indexes the photos into a temporary library and starts `create_app` under uvicorn in a child
process (so client and server do not share a GIL), waits for /api/health, warms up, then runs the clients
with a hard stop. It prints JSON {requests, errors, rps, p50_ms, p95_ms, ...} and, unless --no-write,
replaces the "Web API load test" section of benchmarks/RESULTS.md. `--model lite` (the default when
data/lite-align.pt exists) measures real query latency; `--model toy` is a tiny deterministic encoder.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from xmodal.engine.eval.machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Web API load test"
QUERIES = ["a cat", "a rocket launching", "a cup of coffee", "a dog running on the grass", "an astronaut",
           "children playing in the water", "a horse at sunset", "stars in the night sky", "a man with a camera",
           "green grass", "a red car", "people on a beach"]


# --------------------------------------------------------------------------------------------- server side
def _register_toy() -> None:
    import numpy as np

    from xmodal.indexer.models.base import Preprocess
    from xmodal.indexer.models.encoders import register_encoder

    class Toy:
        """Deterministic stand-in: an image is its mean colour, a text is a hash of its words."""

        name, dim, preprocess = "toy", 16, Preprocess(size=32)

        def encode_images(self, images):
            rows = [np.resize(np.asarray(im.convert("RGB").resize((8, 8)), np.float32).mean((0, 1)), 16) + 1e-3
                    for im in images]
            return self._unit(rows)

        def encode_texts(self, texts):
            return self._unit([np.random.default_rng(zlib.crc32(t.encode())).random(16) for t in texts])

        def _unit(self, rows):
            v = np.asarray(rows, np.float32).reshape(-1, 16)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)

    register_encoder("toy", Toy)


def serve(library: str, photos: str, model: str, port: int) -> None:
    """Child process: index `photos` into `library` with `model`, then serve it on 127.0.0.1:`port`."""
    import uvicorn

    from xmodal.engine.web.server import create_app
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.ingest.pipeline import index_images

    if model == "toy":  # a registered stand-in: indexed here, in the serving process
        _register_toy()
        encoder = get_encoder(model)
        with Library(library, create=True) as lib:
            index_images(lib, [photos], encoder)
    # the lite model was indexed by `xmodal index` beforehand (main): this process, like `xmodal serve`,
    # loads only the query path (ONNX Runtime, no torch)
    uvicorn.run(create_app(library, model=model), host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------------------------- client side
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} before it was ready (see its error "
                             "above; if the lite model cannot load, try --model toy)")
        try:
            if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server was not ready after {timeout:.0f}s")


LONG_QUERY = ("a group of people standing on a crowded beach at sunset while children play in the shallow "
              "water and a dog runs after a red ball near the old wooden pier ") * 8  # 1,000 characters
LONG_QUERY = LONG_QUERY[:1000]


async def _load(base: str, clients: int, duration: float, k: int, queries=None, background: int = 0) -> dict:
    """`clients` measured clients sending `queries` (default QUERIES) for `duration` s; `background` more
    clients send LONG_QUERY meanwhile (not measured)."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + duration
    queries = queries or QUERIES

    async def noise(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            try:
                r = await http.get("/api/search", params={"q": LONG_QUERY, "k": k})
                if r.status_code != 200:
                    errors.append(f"long query {r.status_code}: {r.text[:120]}")
            except httpx.HTTPError as e:
                errors.append(f"long query {type(e).__name__}: {e}")

    async def client(n: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(n)
        while time.perf_counter() < stop_at:
            q = rng.choice(queries)
            t0 = time.perf_counter()
            try:
                r = await http.get("/api/search", params={"q": q, "k": k})
                ok = r.status_code == 200 and len(r.json()["hits"]) > 0
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:120]}")
            except (httpx.HTTPError, ValueError, KeyError) as e:
                ok = False
                errors.append(f"{type(e).__name__}: {e}")
            if ok:
                latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients + background, max_keepalive_connections=clients + background)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        for q in QUERIES[:3]:  # warm-up: encoder loaded, indexes opened
            (await http.get("/api/search", params={"q": q, "k": k})).raise_for_status()
        started = time.perf_counter()
        stop_at = started + duration
        tasks = [asyncio.create_task(client(n, http)) for n in range(clients)]
        tasks += [asyncio.create_task(noise(http)) for _ in range(background)]
        done, pending = await asyncio.wait(tasks, timeout=duration + 15)  # hard stop
        for t in pending:
            t.cancel()
            errors.append("client still busy at the hard stop")
        elapsed = time.perf_counter() - started

    latencies.sort()
    pct = lambda p: round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None  # noqa: E731
    return {"requests": len(latencies) + len(errors), "errors": len(errors), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "max_ms": pct(1.0), "clients": clients,
            "duration_s": round(elapsed, 1), "error_samples": errors[:3]}


def _screenshot(base: str, path: Path, query: str | None, image: Path | None) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = browser.new_page(viewport={"width": 1040, "height": 640})
        page.goto(base + "/")
        if image is not None:  # search by a photo (the toy model ranks by colour, not by words)
            page.set_input_files("#file-input", str(image))
            page.wait_for_function(f"document.querySelector('#status').textContent.includes({image.name!r})"
                                   " && !document.querySelector('#status').textContent.startsWith('searching')")
        else:
            page.fill("#q", query)
            page.press("#q", "Enter")
        page.wait_for_selector("#grid figure.hit")
        page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        browser.close()
    if path.stat().st_size > 300_000:  # keep the README light: a 256-colour palette
        Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    print(f"screenshot: {path} ({path.stat().st_size / 1000:.0f} KB)", file=sys.stderr)


def _write_results(result: dict, note: str = "") -> None:
    r = result
    if r["model"] == "toy":
        note = ("Model `toy` is a deterministic stand-in with no neural network: these figures measure the "
                "server path (HTTP, engine, FAISS, SQLite), not query encoding. " + note).strip()
    body = (f"{SECTION}\n\n"
            f"`benchmarks/load_test.py`: {r['clients']} concurrent clients on loopback, text queries "
            f"(`GET /api/search?q=...&k={r['k']}`), {r['duration_s']} s, model `{r['model']}`, "
            f"{r['images']} photos, uvicorn (1 worker). Machine: {r['cores']} CPU cores ({r['machine']}), "
            f"measured {r['date']}." + (f" {note}" if note else "") + "\n\n"
            "| requests | errors | requests/s | median ms | p95 ms |\n| ---: | ---: | ---: | ---: | ---: |\n"
            f"| {r['requests']} | {r['errors']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} |\n\n"
            "Engine calls are serialized (one query encodes at a time), so latency under load is mostly queueing:\n"
            "about clients / (requests/s). Rerun: `.venv/bin/python benchmarks/load_test.py`.\n")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _m: body + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text.rstrip("\n") + "\n")


def _flickr_subset(folder: Path, n: int) -> str:
    """The first n Flickr8k dev photos, linked into `folder`."""
    data = REPO.parent / "shared" / "data" / "flickr8k"
    split = data / "splits" / "dev.txt"
    names = [line.strip() for line in split.read_text().splitlines() if line.strip()][:n]
    folder.mkdir(parents=True)
    for name in names:
        os.symlink(data / "images" / name, folder / name)
    return str(folder)


SUITE = {  # name -> (measured clients, their queries, background clients sending LONG_QUERY)
    "1 client": (1, None, 0),
    "4 clients": (4, None, 0),
    "short query alone": (1, ["a dog"], 0),
    "short query beside 2 long-query clients": (1, ["a dog"], 2),
}


def _suite(base: str, duration: float, k: int) -> dict:
    runs = {name: asyncio.run(_load(base, c, duration, k, queries=q, background=b)) for name, (c, q, b) in SUITE.items()}
    one, four = runs["1 client"], runs["4 clients"]
    alone, beside = runs["short query alone"], runs["short query beside 2 long-query clients"]
    return {"runs": runs, "duration_s": duration,
            "rps_ratio_4_vs_1": round(four["rps"] / one["rps"], 2) if one["rps"] else None,
            "short_p50_ratio_beside_long": round(beside["p50_ms"] / alone["p50_ms"], 2) if alone["p50_ms"] else None,
            "errors": sum(r["errors"] for r in runs.values())}


def _write_suite(result: dict, note: str = "") -> None:
    r = result
    section = "## Web API concurrency"
    rows = "\n".join(f"| {name} | {x['requests']} | {x['errors']} | {x['rps']} | {x['p50_ms']} | {x['p95_ms']} |"
                      for name, x in r["runs"].items())
    body = (f"{section}\n\n"
            f"`benchmarks/load_test.py --suite --flickr 60`: one `xmodal serve` process (uvicorn, 1 worker), text "
            f"search with reranking (`GET /api/search?q=...&k={r['k']}`), model `{r['model']}`, {r['images']} photos, "
            f"each scenario {r['duration_s']:.0f} s on loopback. CPU: {r['cpu']}, {r['cores']} cores; measured "
            f"{r['date']}." + (f" {note}" if note else "") + "\n\n"
            "| scenario | requests | errors | requests/s | median ms | p95 ms |\n| --- | ---: | ---: | ---: | ---: | ---: |\n"
            f"{rows}\n\n"
            f"4 clients get **{r['rps_ratio_4_vs_1']}x** the requests/s of one (target >= 1.5x); a short query's "
            f"median beside two clients sending 1,000-character queries is **{r['short_p50_ratio_beside_long']}x** its "
            f"median alone (target <= 2x); {r['errors']} errors. No global lock: FAISS, ONNX Runtime and SQLite "
            "run the requests concurrently.\n")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _m: body + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--model", choices=["lite", "toy"],
                    default="lite" if (REPO / "data" / "lite-align.pt").exists() else "toy")
    ap.add_argument("--photos", default=str(REPO / "data" / "samples"))
    ap.add_argument("--screenshot", type=Path, default=None, help="also save a screenshot of the page here")
    ap.add_argument("--screenshot-query", default="a cat")
    ap.add_argument("--screenshot-image", type=Path, default=None,
                    help="search by this photo for the screenshot (default with --model toy: a sample photo)")
    ap.add_argument("--suite", action="store_true",
                    help="the concurrency suite: 1 client, 4 clients, a short query alone and beside 2 clients "
                         "sending 1,000-character queries (one server, one run) -> the 'Web API concurrency' section")
    ap.add_argument("--flickr", type=int, default=0, metavar="N",
                    help="serve N Flickr8k dev photos (../shared/data/flickr8k) instead of --photos")
    ap.add_argument("--note", default="", help="a sentence added to the results section")
    ap.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.relative_to(REPO)}")
    ap.add_argument("--serve", nargs=3, metavar=("LIBRARY", "PHOTOS", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.model, int(args.serve[2]))
        return

    with tempfile.TemporaryDirectory(prefix="xmodal-load-") as tmp:
        if args.flickr:
            args.photos = _flickr_subset(Path(tmp) / "photos", args.flickr)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        if args.model != "toy":
            subprocess.run([sys.executable, "-m", "xmodal.engine.cli", "index", args.photos, "--library",
                            str(Path(tmp) / "library"), "--json"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        proc = subprocess.Popen([sys.executable, __file__, "--model", args.model, "--serve",
                                 str(Path(tmp) / "library"), args.photos, str(port)], cwd=REPO)
        try:
            _wait_healthy(base, proc, timeout=300)
            import httpx

            images = httpx.get(base + "/api/info").json()["images"]
            if args.suite:
                result = _suite(base, args.duration, args.k)
                result.update(model=args.model, images=images, k=args.k, cpu=cpu_name(), cores=os.cpu_count(),
                              date=time.strftime("%Y-%m-%d"), server_pid=proc.pid)
                print(json.dumps(result, indent=2))
                if not args.no_write:
                    _write_suite(result, args.note)
                return
            result = asyncio.run(_load(base, args.clients, args.duration, args.k))
            result.update(model=args.model, images=images, k=args.k, cores=os.cpu_count(),
                          machine=f"{platform.machine()}, {platform.system()}", date=time.strftime("%Y-%m-%d"))
            if args.screenshot:
                image = args.screenshot_image
                if image is None and args.model == "toy":
                    image = REPO / "data" / "samples" / "cat-chelsea.jpg"
                _screenshot(base, args.screenshot, args.screenshot_query, image)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(result, indent=2))
    if not args.no_write:
        _write_results(result, args.note)
    if result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
