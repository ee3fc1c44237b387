"""`xmodal search` and `xmodal explain`: queries over the Python API (xmodal.engine.search)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from xmodal.engine.cli.common import library_dir, emit, edge, library_option, json_option
from xmodal.engine.rerank import DEFAULT_RERANK_K


@click.command()
@click.argument("query", required=False)
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Search by this photo instead of text.")
@click.option("--like", "like", type=click.IntRange(0), default=None, metavar="ID",
              help="More like the indexed photo with this id (the photo itself left out).")
@click.option("--target", type=click.Choice(["images", "texts"]), default="images", show_default=True)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--model", default=None, help="Refuse to run unless the library was built with this model.")
@click.option("--rerank-k", "rerank_k", default=None, type=click.IntRange(1, 10_000),
              help=f"Rerank this many dual-encoder candidates (text -> images, image -> texts) [default: {DEFAULT_RERANK_K}].")
@click.option("--no-rerank", is_flag=True, help="Rank by dual-encoder similarity only.")
@click.option("--no-exemplar", is_flag=True, help="Text -> image: leave out the reranker's exemplar term (the photo "
              "of the Flickr8k train caption nearest to the query), e.g. for things those photos do not show.")
@click.option("--reranker", default="auto", show_default=True,
              help="'auto' (the library's model's own bundled reranker when it has one, else none), 'bundled' (that "
                   "reranker, an error when the model has none), 'lite' (the same, for lite libraries), or a BLIP "
                   "ITM checkpoint (name or folder).")
@click.option("--queries", "queries_file", type=click.File("r", encoding="utf-8", errors="replace"), default=None,
              help="Run every line of this file as a text query ('-': standard input), models loaded once; "
                   "with --json, one JSON object a line: {\"query\": ..., \"hits\": [...]}.")
@click.option("--cutoff", is_flag=True, help="Text -> images: keep only good matches (calibrated probability at least "
              "the default threshold chosen on Flickr8k dev; see docs/cli.md).")
@click.option("--min-prob", "min_prob", default=None, type=click.FloatRange(0.0, 1.0),
              help="Text -> images: keep only hits whose calibrated probability of a match is at least P.")
@click.option("--sort", "sort", type=click.Choice(["score", "date"]), default="score", show_default=True,
              help="Order the hits by score, or by date taken (else file time), newest first.")
@click.option("--mode", type=click.Choice(["semantic", "keyword", "hybrid"]), default=None,
              help="Text -> images: by meaning, by the words in the photos' names, descriptions and OCR text, or "
                   "both in one ranking [default: hybrid].")
@library_option
@json_option
def search(query, image, like, target, k, model, rerank_k, no_rerank, no_exemplar, reranker, queries_file, cutoff,
           min_prob, sort, mode, library, as_json):
    """Search the library by text QUERY, by --image or --like (more like an indexed photo), for images or --target texts. Text -> image and
    image -> text searches rerank the top --rerank-k with the cross-attention reranker.

    QUERY takes operators: `a dog -grass` pushes grass away, `beach + 2:sunset` adds a term weighted x2,
    `-"red car"` excludes a phrase (a hyphen inside a word, as in t-shirt, is not one). `--image PHOTO
    "in winter"` adds words to a photo, `--like ID "in winter"` to an indexed one."""
    from xmodal.engine.search.engine import SearchEngine
    from xmodal.indexer.models.onnx_runtime import one_shot

    photo = image is not None or like is not None
    if sum(map(bool, (query or photo, queries_file))) != 1 or (image and like is not None):
        raise click.UsageError("give one of: a text QUERY, --image FILE or --like ID (with words to add: --image "
                               "FILE QUERY), or --queries FILE")
    rk = 0 if no_rerank else rerank_k
    shown = _Shown(cutoff, min_prob, sort)
    if queries_file is not None:
        return _batch(queries_file, target, k, model, rk, no_exemplar, no_rerank, reranker, library, as_json, shown,
                      mode)
    with edge(), one_shot():  # one query, then exit: sessions load without prepacking (onnx_runtime.one_shot)
        with SearchEngine(library_dir(library), model=model, reranker=None if no_rerank else reranker) as engine:
            if query:
                _say_parsed(engine, query, "photo, " if image else f"photo {like}, " if like is not None else "")
            if image:
                hits = engine.search_image(image, k, target, rerank_k=rk, text=query or None)
            elif like is not None:
                hits = engine.similar(like, k, target, rerank_k=rk, exclude_self=True, text=query or None)
            else:
                hits = engine.search_text(query, k, target, rerank_k=rk, exemplar=not no_exemplar, mode=mode)
                notice = engine.notice(query)
                if notice:
                    click.echo(f"note: {notice}", err=True)
            hits = shown(engine, hits)
    if as_json:
        emit([h.to_json() for h in hits])
        return
    if hits or not shown.cuts:  # nothing passed a cutoff: nothing on stdout (stderr said why)
        _table(hits, target)


class _Shown:
    """--cutoff / --min-prob / --sort applied to a search's hits (SearchEngine.refine); says on stderr when
    nothing passed the cutoff, with the best hit's probability."""

    def __init__(self, cutoff: bool, min_prob: float | None, sort: str):
        self.cutoff, self.min_prob, self.sort = cutoff, min_prob, sort
        self.cuts = cutoff or min_prob is not None

    def __call__(self, engine, hits, label: str = ""):
        threshold = self.min_prob if self.min_prob is not None else (engine.default_cutoff if self.cutoff else None)
        cut = engine.refine(hits, threshold, self.sort)
        if threshold is not None and not cut.hits and hits:
            best = f"{cut.best_prob:.3f}" if cut.best_prob is not None else "unknown"
            click.echo(f"{label}nothing matched well: the best hit's probability of a match was {best}, under "
                       f"{threshold:g}", err=True)
        return cut.hits


def _batch(lines, target, k, model, rk, no_exemplar, no_rerank, reranker, library, as_json, shown,
           mode=None) -> None:
    """`--queries FILE`: every non-blank line a text query, one engine (models loaded once) for all."""
    import json

    from xmodal.engine.search.engine import SearchEngine

    with edge(), SearchEngine(library_dir(library), model=model, reranker=None if no_rerank else reranker) as engine:
        for line in lines:
            query = line.strip()
            if not query:
                continue
            hits = shown(engine, engine.search_text(query, k, target, rerank_k=rk, exemplar=not no_exemplar,
                                                    mode=mode), f"({query}) ")
            notice = engine.notice(query)
            if notice:
                click.echo(f"note ({query}): {notice}", err=True)
            if as_json:
                click.echo(json.dumps({"query": query, "hits": [h.to_json() for h in hits]}, ensure_ascii=False))
            else:
                click.echo(f"== {query}")
                if hits or not shown.cuts:
                    _table(hits, target)


def _say_parsed(engine, query: str, prefix: str = "") -> None:
    """On stderr, how a query with operators or weights was read: `searching for: dog, without grass`."""
    parsed = engine.parse_query(query, with_photo=bool(prefix))
    if prefix or not parsed.simple:
        click.echo(f"searching for: {prefix}{parsed.describe()}", err=True)


def _table(hits, target: str) -> None:
    if not hits:
        click.echo("no results")
        return
    reranked = any(h.match is not None for h in hits)
    expanded = any(h.exemplar is not None for h in hits)
    # reranked: score = cosine - hubness (+ beta * exemplar, text -> image) + alpha * match
    extra = (f"  {'cosine':>6}  {'hubness':>7}" + (f"  {'exemplar':>8}" if expanded else "") + f"  {'match':>6}"
             if reranked else "")
    probs = any(h.prob is not None for h in hits)
    extra += f"  {'prob':>5}" if probs else ""
    click.echo(f"{'rank':>4}  {'score':>6}{extra}  {'id':>6}  {'path' if target == 'images' else 'text'}")
    for h in hits:  # full paths, never shortened: people copy them
        if h.match is not None:
            ex = f"  {h.exemplar or 0.0:>8.3f}" if expanded else ""
            cols = f"  {h.similarity:>6.3f}  {h.hubness or 0.0:>7.3f}{ex}  {h.match:>6.2f}"
        else:
            cols = " " * (len(extra) - (7 if probs else 0))
        cols += f"  {h.prob:>5.2f}" if probs and h.prob is not None else ("       " if probs else "")
        click.echo(f"{h.rank:>4}  {h.score:>6.3f}{cols}  {h.id:>6}  {h.path if target == 'images' else h.text}")
        if h.matched:  # why it matched by its words: the field and the words around them
            click.echo("      matched " + "; ".join(f"{f}: {v}" for f, v in h.matched.items()
                                                  if f not in ("words", "spans")))



@click.command()
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
        with SearchEngine(library_dir(library), reranker="bundled") as engine:
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
        emit({**exp.to_json(), "written": [str(p) for p in written]})
    else:
        click.echo(f"match {exp.match:.2f} for {query!r}; wrote " + ", ".join(str(p) for p in written))
