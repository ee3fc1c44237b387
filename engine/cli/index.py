"""`xmodal index`, `index-texts`, `remove` and `reindex`: the write path (xmodal.indexer.ingest)."""
from __future__ import annotations

import os
import sys

import click


from xmodal.engine.cli.common import (library_dir, emit, console, progress_bar, edge,
                                      library_option, json_option)


@click.command()
@click.argument("paths", nargs=-1, required=False, type=click.Path(exists=True, path_type=str))
@library_option
@click.option("--model", default=None, help="Dual encoder to embed with [default: the library's, else lite].")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--patches/--no-patches", default=True, show_default=True,
              help="Store each photo's patch tokens for the reranker (lite model; 12.5 KB per photo).")
@click.option("--verify", is_flag=True,
              help="Hash every known file again (reads them all) and re-embed those whose content changed.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Embed in this process, or on Ray workers (pip install 'xmodal[ray]').")
@click.option("--ray-address", default=None, help="Join the Ray cluster at ADDR (--engine ray) [default: a local one].")
@click.option("--workers", default=None, type=click.IntRange(1, 4096),
              help="Ray workers, one encoder each (--engine ray) [default: one per CPU, per GPU with cuda].")
@click.option("--shard-size", default=None, type=click.IntRange(1, 100000),
              help="Photos per Ray shard, the unit a worker embeds and the driver commits [default: 256].")
@click.option("--device", default="cpu", show_default=True, help="Where torch encoders run: cpu, cuda or cuda:N.")
@click.option("--ocr/--no-ocr", "ocr", default=None,
              help="Read the text in the photos (OCR; photos indexed before too) for keyword search, and keep it "
                   "on for later runs; --no-ocr turns it off [default: the library's setting, off when new].")
@json_option
def index(paths, library, model, batch_size, patches, verify, engine, ray_address, workers, shard_size, device,
          as_json, ocr):
    """Index the photos under PATHS (recursive); with no PATHS, refresh every folder the library knows.
    Re-runs embed only new or edited files, keep the vectors of moved ones and drop deleted ones.
    Ctrl-C stops after the current batch; running the same command again resumes."""
    import signal
    import threading

    from xmodal.indexer.api import index_folders, library_encoder

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():  # a second Ctrl-C: stop now (still safe: every batch is committed)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third one must not break the clean-up
            raise KeyboardInterrupt
        stop.set()
        console().print("[yellow]stopping after the current batch... (Ctrl-C again to stop now)[/]")

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        with edge():
            encoder = library_encoder(library_dir(library), model)
            with progress_bar("indexing") as progress:
                report = index_folders(library_dir(library), paths, encoder, batch_size=batch_size,
                                       patches=patches, progress=progress, should_stop=stop.is_set, verify=verify,
                                       engine=engine, ray_address=ray_address, workers=workers, device=device,
                                       shard_size=shard_size, ocr=ocr)
            if not report.interrupted:
                from xmodal.engine.search.runtime import prepare_query_runtime

                prepare_query_runtime(encoder)  # searches that follow run without torch from the first
    except KeyboardInterrupt:
        if not stop.is_set():  # a Ctrl-C before the handler was in place, or not on the main thread
            raise
        click.echo("stopped; every committed batch is kept: run the same command again to resume", err=True)
        sys.exit(130)
    finally:
        if stop.is_set():  # the run was stopped and this command is about to exit: a late Ctrl-C has nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # left to stop and must not kill the exit (status -2)
        elif previous is not None:
            signal.signal(signal.SIGINT, previous)
    if as_json:
        emit(report.to_json())
    else:
        rate = report.indexed / report.seconds if report.seconds else 0.0
        click.echo(f"added {report.added}, re-embedded {report.reembedded}, moved {report.moved}, "
                   f"removed {report.removed}, unchanged {report.unchanged}, skipped {len(report.skipped)} "
                   f"in {report.seconds:.1f}s ({rate:.1f} files/s)")
        if report.patched:
            click.echo(f"stored reranker patch tokens for {report.patched} photos indexed before")
        if report.ocr_read:
            click.echo(f"read the text in {report.ocr_read} photos (OCR)")
        for s in report.skipped:
            click.echo(f"  skipped {s.path}: {s.reason}")
    if report.interrupted:
        click.echo(f"interrupted after {report.processed} files; run the same command again to resume", err=True)
        sys.exit(130)


@click.command("index-texts")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=str))
@library_option
@click.option("--model", default=None, help="Dual encoder [default: the library's, else lite].")
@json_option
def index_texts_cmd(path, library, model, as_json):
    """Index a text corpus: .txt (one per line), .csv (`caption` or `text` column), .jsonl (`text`)."""
    from xmodal.indexer.api import index_text_corpus, library_encoder

    with edge():
        encoder = library_encoder(library_dir(library), model)
        with progress_bar("texts", unit="texts") as progress:
            report = index_text_corpus(library_dir(library), path, encoder, progress=progress)
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"indexed {report.indexed} texts from {report.source}"
                   + (f" (replacing {report.replaced})" if report.replaced else "") + f" in {report.seconds:.1f}s")


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@library_option
@json_option
def remove(path, library, as_json):
    """Drop the indexed folder PATH (one of the roots `xmodal index` was given) and its photos."""
    from xmodal.indexer.storage.library import Library

    with edge():
        with Library(library_dir(library)) as lib:
            removed = lib.remove_root(path)
            roots = lib.roots
    if as_json:
        emit({"removed": removed, "root": os.path.abspath(path), "roots": roots})
    else:
        click.echo(f"removed {os.path.abspath(path)} ({removed} photos); {len(roots)} folder(s) left")



@click.command()
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
            with progress_bar("re-embedding") as progress:
                out["model"] = run_reindex(library_dir(library), encoder, progress=progress).to_json()
        if index_type:
            with Library(library_dir(library)) as lib, lib.writing():
                from xmodal.indexer.storage.index_tuning import TUNING_QUERIES

                queries = get_encoder(lib.model).encode_texts(TUNING_QUERIES)
                out["index"] = [lib.rebuild_index(m, None if index_type == "auto" else index_type, queries=queries)
                                for m in ("images", "texts") if lib.store.get_meta(f"generation.{m}", 0)
                                or (m == "images" and lib.store.count_images())
                                or (m == "texts" and lib.store.count_texts())]
    if as_json:
        emit(out)
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
