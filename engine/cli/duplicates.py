"""`xmodal duplicates`: groups of exact and near copies, with the copy to keep (engine/duplicates)."""
from __future__ import annotations

import click

from xmodal.engine.cli.common import edge, emit, json_option, library_dir, library_option


@click.command()
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Pixel confirmation a near copy needs, 0-1 [default: 0.5, chosen on Flickr8k dev]; lower it "
                   "to group photos of one scene (bursts) too.")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=None,
              help="Neighbours searched per photo [default: 10].")
@library_option
@json_option
def duplicates(threshold, k, library, as_json):
    """List groups of duplicate photos: exact copies (the same bytes) and near copies (resized, re-encoded,
    slightly cropped, brightened or colour-shifted), each with the copy to keep and why. Deletes nothing."""
    from xmodal.engine.search.engine import SearchEngine

    with edge():
        with SearchEngine(library_dir(library), reranker=None) as engine:
            report = engine.find_duplicates(threshold, k)
    if as_json:
        emit(report.to_json())
        return
    for s in report.skipped:
        click.echo(f"skipped {s.path}: {s.reason}", err=True)
    if not report.groups:
        click.echo("no duplicates found")
        return
    for n, g in enumerate(report.groups, 1):
        click.echo(f"group {n} ({g.kind}, {len(g.members)} photos): keep {g.keep}: {g.why}")
        for m in g.members:
            mark = "keep" if m.id == g.keep else "    "
            click.echo(f"  {mark} {m.id:>6}  {m.width}x{m.height}  {m.date:%Y-%m-%d}  {m.path}")
    exact = sum(g.kind == "exact" for g in report.groups)
    click.echo(f"{len(report.groups)} groups ({exact} exact, {len(report.groups) - exact} near); nothing was deleted")
