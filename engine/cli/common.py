"""What every `xmodal` command shares: the library and --json options, JSON output, the rich console and
progress bar, and `edge()`, where domain errors become one-line `click.ClickException`s (here and nowhere
else)."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import click

logger = logging.getLogger("xmodal")


def _domain_errors() -> tuple[type[Exception], ...]:
    from xmodal.engine.eval.datasets import DatasetError
    from xmodal.indexer.ingest.ocr import OcrUnavailable
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.storage.library import LibraryError
    from xmodal.indexer.storage.store import StoreError
    from xmodal.indexer.ingest.texts import TextCorpusError
    from xmodal.indexer.storage.vector_index import VectorIndexError

    from xmodal.engine.eval.bench import BenchError
    from xmodal.engine.search.engine import SearchError
    from xmodal.engine.training import TrainingError

    return (DatasetError, ModelUnavailable, LibraryError, StoreError, TextCorpusError, VectorIndexError,
            BenchError, SearchError, FileNotFoundError, OcrUnavailable, TrainingError)


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


def library_dir(path: Path | None) -> Path:
    if path is not None:
        return path
    from xmodal.indexer.storage.library import default_library_dir  # not at import: `xmodal --help` stays light

    return default_library_dir()


def library_model(path: Path) -> str | None:
    """The model a library was built with, or None for a new library."""
    from xmodal.indexer.api import library_model as model_of

    return model_of(path)


def emit(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def console():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress_bar(description: str, unit: str = "files"):
    """A rich progress bar on stderr with rate and ETA; yields a (done, total) callback."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console(),
                  transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
