"""`xmodal info`, `check` and `models`: what a library holds, whether it is sound, which models exist."""
from __future__ import annotations

import sys

import click


from xmodal.engine.cli.common import library_dir, emit, edge, library_option, json_option


@click.command()
@library_option
@json_option
def info(library, as_json):
    """What the library holds: counts, model, index type, sizes."""
    from xmodal.indexer.storage.library import Library

    from xmodal.engine.search.engine import library_info

    with edge():
        with Library(library_dir(library)) as lib:
            data = library_info(lib)
    if as_json:
        emit(data)
        return
    click.echo(f"library   {data['library']}")
    revision = f", weights {data['revision']}" if data["revision"] else ""
    click.echo(f"model     {data['model']} ({data['dim']} dims{revision})")
    if any(data["stale"].values()):
        click.echo(f"stale     {data['stale']['images']} photos, {data['stale']['texts']} texts still carry vectors "
                   "from the model's earlier weights: `xmodal index` embeds them again")
    click.echo(f"images    {data['images']}")
    click.echo(f"ocr       {'on' if data['ocr']['on'] else 'off'}, {data['ocr']['photos_read']} photos read")
    click.echo(f"captions  {data['captions']['photos']} photos have captions from a text corpus")
    click.echo(f"texts     {data['texts']}" + "".join(f"\n          {n:6d}  {s}" for s, n in data["text_sources"].items()))
    for modality, idx in data["indexes"].items():
        click.echo(f"index     {modality}: {idx['factory']}, {idx['vectors']} vectors")
    click.echo(f"on disk   {data['bytes_total'] / 1e6:.2f} MB (" + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in data["bytes"].items()) + ")")
    w = data.get("watch")
    if w:
        state = (f"running (pid {w['pid']}, {w['mode']}, last beat {w['age_seconds']:.0f}s ago)" if w["running"]
                 else f"not running: the watcher (pid {w['pid']}) stopped without a clean exit")
        click.echo(f"watch     {state}: " + ", ".join(w.get("roots") or []))



@click.command()
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

    fixed, restored = None, None
    with edge():
        if repair:
            from xmodal.indexer.storage.check import restore_if_damaged

            restored = restore_if_damaged(library_dir(library))
        with Library(library_dir(library)) as lib:
            report = check_library(lib)
            if repair and (restored or not report.ok):
                fixed = repair_library(lib, lambda: get_encoder(model or lib.model))
                report = check_library(lib)
    if as_json:
        emit({**report.to_json(), **({"repair": fixed.to_json()} if fixed else {}),
              **({"restored_backup": True, "damaged_kept_as": str(restored)} if restored else {})})
    else:
        if restored is not None:
            click.echo(f"library.db was damaged: put back library.db.bak (the damaged file is kept as {restored}); "
                       "run `xmodal index` to catch up on what was indexed after that backup")
        if fixed is not None:
            click.echo(f"repaired: index patches {fixed.patched or 'none'}, removed {fixed.removed_vanished} "
                       f"vanished, re-embedded {fixed.reembedded}, dropped {len(fixed.failed)} unusable"
                       + (f", remade {fixed.patch_tokens} damaged patch tokens" if fixed.patch_tokens else "")
                       + (f", kept {fixed.kept_unreachable} under missing roots" if fixed.kept_unreachable else ""))
            for s in fixed.failed:
                click.echo(f"  dropped {s.path}: {s.reason}")
        counts = ", ".join(f"{k} {m.rows} rows / {m.vectors} vectors" for k, m in report.modalities.items())
        click.echo(f"library {report.library}: {'ok' if report.ok else 'PROBLEMS'} ({counts}; model {report.model})")
        for line in report.problems:
            click.echo(f"  {line}")
        for p in report.vanished[:20]:
            click.echo(f"  vanished {p}")
        for line in report.notes:
            click.echo(f"  note: {line}")
        if not report.ok and not repair and not report.writer:
            click.echo("run `xmodal check --repair` to fix", err=True)
    if not report.ok:
        sys.exit(1)



@click.command()
@json_option
def models(as_json):
    """Models xmodal can use: whether their weights are here, embedding size, licence."""
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.models.encoders import available_encoders, get_encoder
    from xmodal.indexer.models.clip import KNOWN, local_status

    FAMILY = {"lite": "EfficientNet-Lite0 + MiniLM", "base": "EfficientNet-Lite2 + MPNet"}  # the bundled models
    rows = []
    for name in available_encoders():
        if name not in FAMILY:
            continue
        try:
            dim, present = get_encoder(name).dim, True
        except ModelUnavailable:
            dim, present = None, False
        rows.append({"name": name, "local": present, "dim": dim, "family": FAMILY[name],
                     "licence": "Apache-2.0 towers; heads trained on Flickr8k (non-commercial research data)"})
    for name, (dim, licence) in KNOWN.items():
        rows.append({"name": name, "local": local_status(name), "dim": dim, "family": "CLIP family",
                     "licence": licence})
    if as_json:
        emit(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:42s} {'present' if r['local'] else 'not here':9s} {str(r['dim']):>5s}  {r['licence']}")
    click.echo("Any CLIP / SigLIP / Chinese-CLIP checkpoint folder also works: --model /path/to/folder")
