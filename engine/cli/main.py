"""The `xmodal` command: thin click commands over the Python API, one module per command group
(index, search, library, bench, train, serve); shared options and the error edge live in common.py."""
from __future__ import annotations

import logging
import os
import sys

import click

from xmodal.engine.cli import bench, duplicates, index, library, search, serve, train, watch


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


for command in (index.index, index.index_texts_cmd, index.remove, index.reindex, search.search, search.explain,
                library.info, library.check, library.models, duplicates.duplicates, bench.bench, train.train,
                serve.serve, watch.watch):
    cli.add_command(command)


def main() -> None:  # console script entry point
    cli(prog_name="xmodal")


if __name__ == "__main__":
    sys.exit(main())
