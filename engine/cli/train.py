"""`xmodal train align` and `xmodal train rerank` (xmodal.engine.training)."""
from __future__ import annotations

import logging
from pathlib import Path

import click


from xmodal.engine.cli.common import emit, edge, json_option


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


@click.group()
def train():
    """Train a bundled model's heads or its reranker."""


def _train(run, summary, data_dir, out, cache_dir, epochs, seed, as_json, **extra) -> None:
    """Run a training job with its progress logged (per epoch) and domain errors made one line; print its
    report as JSON, or the lines `summary(report)` gives."""
    logging.getLogger("xmodal.engine").setLevel(logging.INFO)
    with edge():
        report = run(data_dir, out=out, cache_dir=cache_dir, epochs=epochs, seed=seed, **extra)
    if as_json:
        emit(report)
        return
    for line in summary(report):
        click.echo(line)


@train.command("align")
@training_options("the bundled model's heads: lite-align.pt, or base-align.pt with --model base")
@click.option("--model", type=click.Choice(["lite", "base"]), default="lite", show_default=True,
              help="Which bundled model's heads: lite (EfficientNet-Lite0 + MiniLM) or base (Lite2 + MPNet).")
def train_align_cmd(data_dir, out, cache_dir, epochs, seed, as_json, model):
    """Train the alignment heads on the train split, select on dev (LiT-style, towers locked)."""
    from xmodal.engine.training.align import run_align

    def summary(report):
        dev = report["dev"]
        yield (f"best epochs {report['epochs']}: dev t2i R@1/5/10 " + "/".join(f"{v:.1f}" for v in dev["t2i"].values())
               + ", i2t R@1/5/10 " + "/".join(f"{v:.1f}" for v in dev["i2t"].values()) + f" -> {report['out']}")

    _train(run_align, summary, data_dir, out, cache_dir, epochs, seed, as_json, model=model)


@train.command("rerank")
@training_options("the bundled model's reranker: lite-rerank.pt, or base-rerank.pt with --model base")
@click.option("--model", type=click.Choice(["lite", "base"]), default="lite", show_default=True,
              help="Which bundled model's reranker: its towers' patch tokens and token states, its dual heads.")
@click.option("--heads", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Dual heads checkpoint for mining and the first stage (default: the model's bundled heads).")
@click.option("--patch-dim", type=click.IntRange(0, 1280), default=None,
              help="PCA channels per stored patch token (default 128; base's 81 tokens need <= 96 to fit 16 KB).")
@click.option("--refit", is_flag=True, help="Keep the weights of --out; rebuild its hubness and exemplar banks and "
              "choose the fusion weights again on dev (no training, minutes).")
def train_rerank_cmd(data_dir, out, cache_dir, epochs, seed, as_json, model, heads, patch_dim, refit):
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

    extra = {} if patch_dim is None else {"patch_dim": patch_dim}
    _train(run_rerank, summary, data_dir, out, cache_dir, epochs, seed, as_json, refit=refit, model=model,
           heads=heads, **extra)
