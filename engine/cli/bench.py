"""`xmodal bench recall` and `xmodal bench speed` (xmodal.engine.eval)."""
from __future__ import annotations

from pathlib import Path

import click

from xmodal.indexer.resources import samples_dir

from xmodal.engine.rerank import DEFAULT_RERANK_K

from xmodal.engine.cli.common import emit, progress_bar, edge, json_option


@click.group()
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
              help="Also rerank the dual encoder's top-K with the model's own cross-attention reranker "
                   "(lite-rerank.pt for --model lite, base-rerank.pt for --model base).")
@click.option("--rerank-k", "rerank_ks", type=click.IntRange(1, 10_000), multiple=True,
              help=f"How many dual-encoder candidates to rerank (repeatable) [default: {DEFAULT_RERANK_K}, as search].")
@click.option("--reranker", "reranker_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Reranker checkpoint [default: the --model's own bundled reranker].")
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
            from xmodal.indexer.models.base import ModelUnavailable
            from xmodal.indexer.models.towers import bundled_reranker

            from xmodal.engine.rerank.choice import no_reranker_reason
            from xmodal.engine.rerank.lite import Reranker

            path = reranker_path or bundled_reranker(model)
            if path is None:
                raise ModelUnavailable(f"model {model!r} has no bundled reranker ({no_reranker_reason(model)}); "
                                       "give a checkpoint with --reranker PATH, or drop --rerank")
            reranker = Reranker(path)
        with progress_bar(f"embedding {ds.name}", unit="items") as progress:
            if rerank:
                report = rerank_benchmark(ds, encoder, reranker, rerank_ks=rerank_ks or (DEFAULT_RERANK_K,), progress=progress)
            else:
                report = recall_benchmark(ds, encoder, progress=progress)
    if as_json:
        emit(report)
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
    """Indexing throughput of --photos, then query latency, ANN recall against exact search, speed-up and the
    search process's memory on a simulated collection of --scale photos (the code behind benchmarks/scale.py:
    `--scale 1000000` reproduces its 1M row in about 15 minutes). Says which index and parameters it measured."""
    from xmodal.indexer.models.encoders import get_encoder

    from xmodal.engine.eval.sources import default_data_dir
    from xmodal.engine.eval.speed import bench_speed

    with edge():
        result = bench_speed(get_encoder(model), photos or samples_dir(), scale=scale, data=default_data_dir())
    if as_json:
        emit(result)
        return
    for key, value in result.items():
        if key != "scale_run":
            click.echo(f"{key:18s} {value}")
