"""The `xmodal` command: thin click commands over the Python API (engine.search, indexer.pipeline, ...).
Domain errors become one-line `click.ClickException`s here and nowhere else."""
from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from xmodal.indexer.storage.library import default_library_dir
from xmodal.indexer.resources import samples_dir

logger = logging.getLogger("xmodal")


def _domain_errors() -> tuple[type[Exception], ...]:
    from xmodal.engine.eval.datasets import DatasetError
    from xmodal.indexer.models.encoders import ModelUnavailable
    from xmodal.indexer.storage.library import LibraryError
    from xmodal.indexer.storage.store import StoreError
    from xmodal.indexer.ingest.texts import TextCorpusError
    from xmodal.indexer.storage.vector_index import VectorIndexError

    from xmodal.engine.eval.bench import BenchError
    from xmodal.engine.search.engine import SearchError

    return (DatasetError, ModelUnavailable, LibraryError, StoreError, TextCorpusError, VectorIndexError,
            BenchError, SearchError, FileNotFoundError)


@contextmanager
def edge():
    """Turn domain exceptions into a one-line error and exit code 1."""
    try:
        yield
    except _domain_errors() as e:
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


library_option = click.option(
    "--library", "library", type=click.Path(file_okay=False, path_type=Path), envvar="XMODAL_LIBRARY",
    default=None, help="Library folder (env XMODAL_LIBRARY; default under $XDG_DATA_HOME/xmodal).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _library(path: Path | None) -> Path:
    return path if path is not None else default_library_dir()


def _library_model(path: Path) -> str | None:
    """The model a library was built with, or None for a new library."""
    from xmodal.indexer.storage.library import Library

    if not (path / "library.db").exists():
        return None
    with Library(path) as lib:
        return lib.model


def _emit(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _console():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _progress(description: str, unit: str = "files"):
    """A rich progress bar on stderr with rate and ETA; yields a (done, total) callback."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=_console(),
                  transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="xmodal", message="%(prog)s %(version)s")
def cli(verbose: int) -> None:
    """xmodal: find photos by describing them, photos like a photo, and texts that describe a photo."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- index
@cli.command()
@click.argument("paths", nargs=-1, required=False, type=click.Path(exists=True, path_type=str))
@library_option
@click.option("--model", default=None, help="Dual encoder to embed with [default: the library's, else lite].")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--patches/--no-patches", default=True, show_default=True,
              help="Store each photo's patch tokens for the reranker (lite model; 12.5 KB per photo).")
@json_option
def index(paths, library, model, batch_size, patches, as_json):
    """Index the photos under PATHS (recursive); with no PATHS, refresh every folder the library knows.
    Re-runs embed only new or edited files, keep the vectors of moved ones and drop deleted ones.
    Ctrl-C stops after the current batch; running the same command again resumes."""
    import signal
    import threading

    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.storage.patch_tokens import default_projector
    from xmodal.indexer.ingest.pipeline import index_images

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():  # a second Ctrl-C: stop now (still safe: every batch is committed)
            raise KeyboardInterrupt
        stop.set()
        _console().print("[yellow]stopping after the current batch... (Ctrl-C again to stop now)[/]")

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        with edge():
            encoder = get_encoder(model or _library_model(_library(library)) or "lite")
            projector = default_projector(encoder.name) if patches else None
            with Library(_library(library), create=True) as lib:
                with _progress("indexing") as progress:
                    report = index_images(lib, list(paths), encoder, batch_size=batch_size, progress=progress,
                                          should_stop=stop.is_set, patches=projector)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if as_json:
        _emit(report.to_json())
    else:
        rate = report.indexed / report.seconds if report.seconds else 0.0
        click.echo(f"added {report.added}, re-embedded {report.reembedded}, moved {report.moved}, "
                   f"removed {report.removed}, unchanged {report.unchanged}, skipped {len(report.skipped)} "
                   f"in {report.seconds:.1f}s ({rate:.1f} files/s)")
        if report.patched:
            click.echo(f"stored reranker patch tokens for {report.patched} photos indexed before")
        for s in report.skipped:
            click.echo(f"  skipped {s.path}: {s.reason}")
    if report.interrupted:
        click.echo(f"interrupted after {report.processed} files; run the same command again to resume", err=True)
        sys.exit(130)


@cli.command("index-texts")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=str))
@library_option
@click.option("--model", default=None, help="Dual encoder [default: the library's, else lite].")
@json_option
def index_texts_cmd(path, library, model, as_json):
    """Index a text corpus: .txt (one per line), .csv (`caption` or `text` column), .jsonl (`text`)."""
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.ingest.pipeline import index_texts

    from xmodal.indexer.storage.patch_tokens import default_projector

    with edge():
        encoder = get_encoder(model or _library_model(_library(library)) or "lite")
        tokens = default_projector(encoder.name) is not None  # the bundled reranker will read them
        with Library(_library(library), create=True) as lib:
            with _progress("texts", unit="texts") as progress:
                report = index_texts(lib, path, encoder, progress=progress, tokens=tokens)
    if as_json:
        _emit(report.to_json())
    else:
        click.echo(f"indexed {report.indexed} texts from {report.source}"
                   + (f" (replacing {report.replaced})" if report.replaced else "") + f" in {report.seconds:.1f}s")


@cli.command()
@click.argument("path", type=click.Path(path_type=str))
@library_option
@json_option
def remove(path, library, as_json):
    """Drop the indexed folder PATH (one of the roots `xmodal index` was given) and its photos."""
    from xmodal.indexer.storage.library import Library

    with edge():
        with Library(_library(library)) as lib:
            removed = lib.remove_root(path)
            roots = lib.roots
    if as_json:
        _emit({"removed": removed, "root": os.path.abspath(path), "roots": roots})
    else:
        click.echo(f"removed {os.path.abspath(path)} ({removed} photos); {len(roots)} folder(s) left")


# ---------------------------------------------------------------------------------------------- search
@cli.command()
@click.argument("query", required=False)
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Search by this photo instead of text.")
@click.option("--target", type=click.Choice(["images", "texts"]), default="images", show_default=True)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--model", default=None, help="Refuse to run unless the library was built with this model.")
@click.option("--rerank-k", "rerank_k", default=None, type=click.IntRange(1, 10_000),
              help="Rerank this many dual-encoder candidates (text -> images, image -> texts) [default: 16].")
@click.option("--no-rerank", is_flag=True, help="Rank by dual-encoder similarity only.")
@click.option("--no-exemplar", is_flag=True, help="Text -> image: leave out the reranker's exemplar term (the photo "
              "of the Flickr8k train caption nearest to the query), e.g. for things those photos do not show.")
@click.option("--reranker", default="auto", show_default=True,
              help="'auto' (the bundled reranker for lite libraries), 'lite', or a BLIP ITM checkpoint (name or folder).")
@library_option
@json_option
def search(query, image, target, k, model, rerank_k, no_rerank, no_exemplar, reranker, library, as_json):
    """Search the library by text QUERY or by --image, for images or --target texts. Text -> image and
    image -> text searches rerank the top --rerank-k with the cross-attention reranker."""
    from xmodal.engine.search.engine import SearchEngine

    if bool(query) == bool(image):
        raise click.UsageError("give either a text QUERY or --image FILE (not both)")
    rk = 0 if no_rerank else rerank_k
    with edge():
        with SearchEngine(_library(library), model=model, reranker=None if no_rerank else reranker) as engine:
            if query:
                hits = engine.search_text(query, k, target, rerank_k=rk, exemplar=not no_exemplar)
            else:
                hits = engine.search_image(image, k, target, rerank_k=rk)
    if as_json:
        _emit([h.to_json() for h in hits])
        return
    if not hits:
        click.echo("no results")
        return
    reranked = any(h.match is not None for h in hits)
    expanded = any(h.exemplar is not None for h in hits)
    # reranked: score = cosine - hubness (+ beta * exemplar, text -> image) + alpha * match
    extra = (f"  {'cosine':>6}  {'hubness':>7}" + (f"  {'exemplar':>8}" if expanded else "") + f"  {'match':>6}"
             if reranked else "")
    click.echo(f"{'rank':>4}  {'score':>6}{extra}  {'id':>6}  {'path' if target == 'images' else 'text'}")
    for h in hits:  # full paths, never shortened: people copy them
        if h.match is not None:
            ex = f"  {h.exemplar or 0.0:>8.3f}" if expanded else ""
            cols = f"  {h.similarity:>6.3f}  {h.hubness or 0.0:>7.3f}{ex}  {h.match:>6.2f}"
        else:
            cols = " " * len(extra)
        click.echo(f"{h.rank:>4}  {h.score:>6.3f}{cols}  {h.id:>6}  {h.path if target == 'images' else h.text}")


# ---------------------------------------------------------------------------------------------- explain
@cli.command()
@click.argument("query")
@click.argument("image")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write: the photo with the heatmap of where the query matched.")
@click.option("--per-word", is_flag=True, help="Also write one heatmap per word (OUTPUT-01-word.png, ...).")
@library_option
@json_option
def explain(query, image, output, per_word, library, as_json):
    """Show which regions of IMAGE (a file, or the id of an indexed photo) the reranker matched with QUERY:
    its cross-attention from the query's words to the photo's patches, as a heatmap over the photo."""
    import re

    from xmodal.engine.rerank.explain import overlay
    from xmodal.engine.search.engine import SearchEngine

    target = int(image) if image.isdigit() and not os.path.exists(image) else image
    with edge():
        with SearchEngine(_library(library), reranker="lite") as engine:
            exp, photo = engine.explain(query, target)
        written = [output]
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            overlay(photo, exp.overall).save(output, format="PNG")
            if per_word:
                for n, (word, grid) in enumerate(zip(exp.words, exp.word_maps), 1):
                    safe = re.sub(r"[^\w-]+", "_", word).strip("_") or "word"
                    path = output.with_name(f"{output.stem}-{n:02d}-{safe}.png")
                    overlay(photo, grid).save(path, format="PNG")
                    written.append(path)
        except OSError as e:
            raise click.ClickException(f"cannot write {e.filename or output}: {e.strerror or e}") from e
    if as_json:
        _emit({**exp.to_json(), "written": [str(p) for p in written]})
    else:
        click.echo(f"match {exp.match:.2f} for {query!r}; wrote " + ", ".join(str(p) for p in written))


# ---------------------------------------------------------------------------------------------- info
@cli.command()
@library_option
@json_option
def info(library, as_json):
    """What the library holds: counts, model, index type, sizes."""
    from xmodal.indexer.storage.library import Library

    from xmodal.engine.search.engine import library_info

    with edge():
        with Library(_library(library)) as lib:
            data = library_info(lib)
    if as_json:
        _emit(data)
        return
    click.echo(f"library   {data['library']}")
    click.echo(f"model     {data['model']} ({data['dim']} dims)")
    click.echo(f"images    {data['images']}")
    click.echo(f"texts     {data['texts']}" + "".join(f"\n          {n:6d}  {s}" for s, n in data["text_sources"].items()))
    for modality, idx in data["indexes"].items():
        click.echo(f"index     {modality}: {idx['factory']}, {idx['vectors']} vectors")
    click.echo(f"on disk   {data['bytes_total'] / 1e6:.2f} MB (" + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in data["bytes"].items()) + ")")


# ---------------------------------------------------------------------------------------------- check
@cli.command()
@library_option
@click.option("--repair", is_flag=True, help="Fix what is wrong; embeds again only rows with no usable vector.")
@click.option("--model", default=None, help="Encoder for re-embedding [default: the library's].")
@json_option
def check(library, repair, model, as_json):
    """Verify the library: one vector per row and one row per vector, counts, model, vanished files.
    Exits 1 with a report when something is wrong (after --repair: when something is still wrong)."""
    from xmodal.indexer.storage.check import check_library
    from xmodal.indexer.storage.check import repair as repair_library
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.storage.library import Library

    fixed = None
    with edge():
        with Library(_library(library)) as lib:
            report = check_library(lib)
            if repair and not report.ok:
                fixed = repair_library(lib, lambda: get_encoder(model or lib.model))
                report = check_library(lib)
    if as_json:
        _emit({**report.to_json(), **({"repair": fixed.to_json()} if fixed else {})})
    else:
        if fixed is not None:
            click.echo(f"repaired: index patches {fixed.patched or 'none'}, removed {fixed.removed_vanished} "
                       f"vanished, re-embedded {fixed.reembedded}, dropped {len(fixed.failed)} unusable")
            for s in fixed.failed:
                click.echo(f"  dropped {s.path}: {s.reason}")
        counts = ", ".join(f"{k} {m.rows} rows / {m.vectors} vectors" for k, m in report.modalities.items())
        click.echo(f"library {report.library}: {'ok' if report.ok else 'PROBLEMS'} ({counts}; model {report.model})")
        for line in report.problems:
            click.echo(f"  {line}")
        for p in report.vanished[:20]:
            click.echo(f"  vanished {p}")
        if not report.ok and not repair:
            click.echo("run `xmodal check --repair` to fix", err=True)
    if not report.ok:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- reindex
@cli.command()
@library_option
@click.option("--model", default=None, help="Re-embed everything with this model.")
@click.option("--index-type", "index_type", default=None,
              help="Rebuild the FAISS index as this factory string (e.g. Flat, HNSW32, IVF1024,Flat) or 'auto', "
                   "from the stored vectors: nothing is re-embedded.")
@json_option
def reindex(library, model, index_type, as_json):
    """Re-embed the library with --model (built beside, then swapped), and/or rebuild its index as --index-type."""
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.storage.reindex import reindex as run_reindex

    if not model and not index_type:
        raise click.UsageError("give --model NAME, --index-type KEY, or both")
    out = {}
    with edge():
        if model:
            encoder = get_encoder(model)
            with _progress("re-embedding") as progress:
                out["model"] = run_reindex(_library(library), encoder, progress=progress).to_json()
        if index_type:
            with Library(_library(library)) as lib, lib.writing():
                from xmodal.indexer.storage.index_tuning import TUNING_QUERIES

                queries = get_encoder(lib.model).encode_texts(TUNING_QUERIES)
                out["index"] = [lib.rebuild_index(m, None if index_type == "auto" else index_type, queries=queries)
                                for m in ("images", "texts") if lib.store.get_meta(f"generation.{m}", 0)
                                or (m == "images" and lib.store.count_images())
                                or (m == "texts" and lib.store.count_texts())]
    if as_json:
        _emit(out)
        return
    if "model" in out:
        r = out["model"]
        click.echo(f"re-embedded {r['images']['indexed']} photos and {r['texts']} texts with {r['model_after']} "
                   f"(was {r['model_before']}); skipped {len(r['images']['skipped'])}")
        for source in r["missing_text_sources"]:
            click.echo(f"  text file {source} no longer exists: its texts were dropped")
    for r in out.get("index", []):
        click.echo(f"{r['modality']}: rebuilt as {r['factory']} over {r['vectors']} vectors, search params "
                   f"{r['params'] or 'none'} (recall@10 {r['recall_at_k']:.3f} against exact search)")


# ---------------------------------------------------------------------------------------------- models
@cli.command()
@json_option
def models(as_json):
    """Models xmodal can use: whether their weights are here, embedding size, licence."""
    from xmodal.indexer.models.encoders import ModelUnavailable, available_encoders, get_encoder
    from xmodal.indexer.models.clip import KNOWN, local_status

    rows = []
    for name in available_encoders():
        if name != "lite":
            continue
        try:
            dim, present = get_encoder(name).dim, True
        except ModelUnavailable:
            dim, present = None, False
        rows.append({"name": name, "local": present, "dim": dim, "family": "EfficientNet-Lite0 + MiniLM",
                     "licence": "Apache-2.0 towers; heads trained on Flickr8k (non-commercial research data)"})
    for name, (dim, licence) in KNOWN.items():
        rows.append({"name": name, "local": local_status(name), "dim": dim, "family": "CLIP family",
                     "licence": licence})
    if as_json:
        _emit(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:42s} {'present' if r['local'] else 'not here':9s} {str(r['dim']):>5s}  {r['licence']}")
    click.echo("Any CLIP / SigLIP / Chinese-CLIP checkpoint folder also works: --model /path/to/folder")


# ---------------------------------------------------------------------------------------------- bench
@cli.group()
def bench():
    """Benchmarks."""


@bench.command("recall")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--split", "split_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Image names, one per line, to restrict to (e.g. splits/dev.txt).")
@click.option("--karpathy-split", type=click.Choice(["train", "val", "test", "restval"]), default=None,
              help="With a Karpathy dataset_*.json: which split to evaluate.")
@click.option("--model", default="lite", show_default=True)
@click.option("--rerank/--no-rerank", default=False, show_default=True,
              help="Also rerank the dual encoder's top-K with the cross-attention reranker (data/lite-rerank.pt).")
@click.option("--rerank-k", "rerank_ks", type=click.IntRange(1, 10_000), multiple=True,
              help="How many dual-encoder candidates to rerank (repeatable) [default: 16].")
@click.option("--reranker", "reranker_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Reranker checkpoint [default: data/lite-rerank.pt].")
@json_option
def bench_recall(dataset, split_file, karpathy_split, model, rerank, rerank_ks, reranker_path, as_json):
    """Recall@1/5/10 for text->image and image->text on DATASET (images/ + captions.txt, or Karpathy JSON)."""
    from xmodal.engine.eval.datasets import load_dataset
    from xmodal.indexer.models.encoders import get_encoder

    from xmodal.engine.eval.bench import recall_benchmark, rerank_benchmark

    with edge():
        ds = load_dataset(dataset, split_file=split_file, karpathy_split=karpathy_split)
        encoder = get_encoder(model)
        if rerank:
            from xmodal.indexer.models.encoders import ModelUnavailable

            from xmodal.engine.rerank.lite import LITE_RERANK, Reranker

            path = reranker_path or LITE_RERANK
            if not Path(path).exists():
                raise ModelUnavailable(f"reranker not found at {path}; train it with `xmodal train rerank --data DIR`")
            reranker = Reranker(path)
        with _progress(f"embedding {ds.name}", unit="items") as progress:
            if rerank:
                report = rerank_benchmark(ds, encoder, reranker, rerank_ks=rerank_ks or (16,), progress=progress)
            else:
                report = recall_benchmark(ds, encoder, progress=progress)
    if as_json:
        _emit(report)
        return
    click.echo(f"{ds.name}: {report['n_images']} images, {report['n_texts']} captions, model {model}")
    click.echo(f"{'':14s}" + "".join(f"{k:>8s}" for k in report["t2i"]))
    for direction in ("t2i", "i2t"):
        click.echo(f"{direction:14s}" + "".join(f"{v:8.2f}" for v in report[direction].values()))
        for k, r in report.get("rerank", {}).items():
            click.echo(f"{direction + ' rerank@' + str(k):14s}" + "".join(f"{v:8.2f}" for v in r[direction].values()))


@bench.command("speed")
@click.option("--photos", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Photos to index for the throughput figure [default: the bundled samples].")
@click.option("--scale", type=click.IntRange(100, 50_000_000), default=10_000, show_default=True,
              help="Simulated collection size for query latency and ANN recall.")
@click.option("--model", default="lite", show_default=True)
@json_option
def bench_speed_cmd(photos, scale, model, as_json):
    """Indexing and query speed at a small scale: images/s, forward-pass rate, latency, ANN recall, memory."""
    from xmodal.indexer.models.encoders import get_encoder

    from xmodal.engine.eval.sources import default_data_dir
    from xmodal.engine.eval.speed import bench_speed

    with edge():
        result = bench_speed(get_encoder(model), photos or samples_dir(), scale=scale, data=default_data_dir())
    if as_json:
        _emit(result)
        return
    for key, value in result.items():
        if key != "scale_run":
            click.echo(f"{key:18s} {value}")


# ---------------------------------------------------------------------------------------------- train
def training_options(checkpoint: str):
    """The options every `xmodal train` command shares; `checkpoint` names the default --out."""
    def decorate(f):
        for option in reversed([
            click.option("--data", "data_dir", required=True,
                         type=click.Path(exists=True, file_okay=False, path_type=Path),
                         help="Flickr8k-style folder: images/, captions.txt, splits/train.txt, splits/dev.txt."),
            click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help=f"Checkpoint to write (default: {checkpoint})."),
            click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Where tower features are cached (default ~/.cache/xmodal/features)."),
            click.option("--epochs", type=click.IntRange(1, 1000), default=None),
            click.option("--seed", type=int, default=0, show_default=True),
            json_option,
        ]):
            f = option(f)
        return f
    return decorate


@cli.group()
def train():
    """Train the lite model's heads."""


def _train(run, summary, data_dir, out, cache_dir, epochs, seed, as_json, **extra) -> None:
    """Run a training job with its progress logged (per epoch) and domain errors made one line; print its
    report as JSON, or the lines `summary(report)` gives."""
    logging.getLogger("engine").setLevel(logging.INFO)
    with edge():
        report = run(data_dir, out=out, cache_dir=cache_dir, epochs=epochs, seed=seed, **extra)
    if as_json:
        _emit(report)
        return
    for line in summary(report):
        click.echo(line)


@train.command("align")
@training_options("the bundled data/lite-align.pt")
def train_align_cmd(data_dir, out, cache_dir, epochs, seed, as_json):
    """Train the alignment heads on the train split, select on dev (LiT-style, towers locked)."""
    from xmodal.engine.training.align import run_align

    def summary(report):
        dev = report["dev"]
        yield (f"best epochs {report['epochs']}: dev t2i R@1/5/10 " + "/".join(f"{v:.1f}" for v in dev["t2i"].values())
               + ", i2t R@1/5/10 " + "/".join(f"{v:.1f}" for v in dev["i2t"].values()) + f" -> {report['out']}")

    _train(run_align, summary, data_dir, out, cache_dir, epochs, seed, as_json)


@train.command("rerank")
@training_options("data/lite-rerank.pt")
@click.option("--refit", is_flag=True, help="Keep the weights of --out; rebuild its hubness and exemplar banks and "
              "choose the fusion weights again on dev (no training, minutes).")
def train_rerank_cmd(data_dir, out, cache_dir, epochs, seed, as_json, refit):
    """Train the cross-attention reranker (contrastive, with hard negatives) on train, select on dev."""
    from xmodal.engine.training.rerank import run_rerank

    def summary(report):
        dev = report["dev"]
        for k, r in dev.get("hub", {}).items():
            yield (f"dev K={k} hubness correction alone: t2i R@1 {dev['dual']['t2i']['R@1']:.2f} -> "
                   f"{r['t2i']['R@1']:.2f}, i2t R@1 {dev['dual']['i2t']['R@1']:.2f} -> {r['i2t']['R@1']:.2f}")
        for k, r in dev.get("exemplar", {}).items():
            yield (f"dev K={k} hubness + exemplar (beta {r['beta']}), no cross-attention: t2i R@1 "
                   f"{dev['dual']['t2i']['R@1']:.2f} -> {r['t2i']['R@1']:.2f}")
        for k, r in dev["K"].items():
            yield (f"dev K={k} alpha {r['alpha']} beta {r['beta']}: t2i R@1 {dev['dual']['t2i']['R@1']:.2f} -> "
                   f"{r['t2i']['R@1']:.2f}, i2t R@1 {dev['dual']['i2t']['R@1']:.2f} -> {r['i2t']['R@1']:.2f}")
        how = "refit, no training" if report["refit"] else f"{report['train_seconds']:.0f}s training"
        yield f"-> {report['out']} ({how})"

    _train(run_rerank, summary, data_dir, out, cache_dir, epochs, seed, as_json, refit=refit)


# ---------------------------------------------------------------------------------------------- serve
@cli.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="XMODAL_TOKEN", default=None,
              help="Access token every API call must carry (env XMODAL_TOKEN); required off loopback.")
@click.option("--model", default=None, help="Refuse to run unless the library was built with this model.")
def serve(library, host, port, token, model):
    """Web UI and JSON API (docs at /docs) for searching the library in a browser."""
    from xmodal.engine.web.server import create_app, is_loopback

    if not is_loopback(host) and not token:
        raise click.UsageError(f"binding to {host} exposes your photos to the network: give --token "
                               "(or env XMODAL_TOKEN), or keep the default --host 127.0.0.1")
    with edge():
        app = create_app(_library(library), token=token, model=model)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    click.echo(f"xmodal: serving {_library(library)} on http://{shown}:{port}/"
               + (" (open it as /?token=YOUR_TOKEN)" if token else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def main() -> None:  # console script entry point
    cli(prog_name="xmodal")


if __name__ == "__main__":
    sys.exit(main())
