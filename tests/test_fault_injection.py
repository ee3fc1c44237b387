"""Fault injection: bytes corrupted at chosen offsets of each library file. For every file, `xmodal check`
finds it (exit 1, or one line naming the damage, never a traceback), `xmodal check --repair` fixes it, and
after `xmodal index` the library answers every query exactly as a clean build does, without embedding again
what the store still holds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import draw, vectors_by_path
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine

COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "white", "black")


def build(root: Path, library: Path, corpus: Path) -> None:
    runner = CliRunner()
    args = ["--library", str(library), "--model", "fake-colour"]
    assert runner.invoke(cli, ["index", str(root), *args]).exit_code == 0
    assert runner.invoke(cli, ["index-texts", str(corpus), *args]).exit_code == 0


def answers(library: Path) -> dict:
    with SearchEngine(library) as engine:
        return {c: [(h.path, round(h.score, 5)) for h in engine.search_text(c, k=8)] for c in COLOURS} | {
            "texts": [(h.text, round(h.score, 5)) for h in engine.search_text("red", k=3, target="texts")]}


@pytest.fixture
def clean_and_damaged(tmp_path, fake_encoder):
    photos = tmp_path / "photos"
    for n, colour in enumerate(COLOURS):
        draw(photos / f"{n}-{colour}.jpg", colour)
    corpus = tmp_path / "texts.txt"
    corpus.write_text("".join(f"a {c} thing\n" for c in COLOURS))
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    build(photos, clean, corpus)
    build(photos, damaged, corpus)
    return clean, damaged


def corrupt(path: Path, where: float, length: int, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * where), max(0, len(data) - length))
    data[start:start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, where, length", [
    ("images.faiss", 0.5, 16),          # the codes: loads fine, wrong answers
    ("images.faiss", 0.0, 64),          # the header: does not load
    ("texts.faiss", 0.6, 8),
    ("images.faiss.json", 0.3, 12),     # the sidecar: not JSON any more
    ("library.db", 0.25, 4096),         # pages of the database
])
def test_check_finds_a_corrupted_file_and_repair_restores_a_clean_builds_answers(
        clean_and_damaged, fake_encoder, name, where, length):
    clean, damaged = clean_and_damaged
    expected = answers(clean)
    corrupt(damaged / name, where, length)
    runner, args = CliRunner(), ["--library", str(damaged)]

    found = runner.invoke(cli, ["check", "--json", *args])
    assert found.exit_code == 1 and "Traceback" not in found.output
    if found.stdout.startswith("{"):
        assert json.loads(found.stdout)["problems"]
    else:  # the database itself: one line that names the damage and the way out
        assert "is damaged" in found.output and "check --repair" in found.output

    fake_encoder.calls["images"] = 0
    repaired = runner.invoke(cli, ["check", "--repair", "--json", *args])
    assert repaired.exit_code == 0, repaired.output
    assert runner.invoke(cli, ["index", *args]).exit_code == 0
    assert fake_encoder.calls["images"] == 0  # the store's vectors were enough: nothing embedded again
    assert runner.invoke(cli, ["check", *args]).exit_code == 0
    assert answers(damaged) == expected
    assert vectors_by_path(damaged).keys() == vectors_by_path(clean).keys()
