"""The Python API the README shows: index folders and a text corpus, then search by text, by photo and for
the texts that describe a photo, through the names `xmodal.indexer` and `xmodal.engine` export."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import xmodal.engine as engine_api
import xmodal.indexer as indexer_api
from xmodal.engine import SearchEngine
from xmodal.indexer import index_folders, index_text_corpus, library_model


def test_index_a_folder_and_search_it_by_text_photo_and_for_texts(photos, library, tmp_path, fake_encoder):
    report = index_folders(library, [photos], model="fake-colour")
    assert report.added == 4 and library_model(library) == "fake-colour"
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a red apple\na green meadow\n")
    assert index_text_corpus(library, corpus).indexed == 2  # the library's own model, without naming it

    with SearchEngine(library) as engine:
        assert Path(engine.search_text("something red", k=1)[0].path).name == "red.jpg"
        assert Path(engine.search_image(photos / "blue.jpg", k=1)[0].path).name == "blue.jpg"
        assert engine.search_image(photos / "green.png", k=1, target="texts")[0].text == "a green meadow"


def test_indexing_again_embeds_nothing_that_did_not_change(photos, library, fake_encoder):
    index_folders(library, [photos], model="fake-colour")
    before = fake_encoder.calls["images"]
    report = index_folders(library, [photos])
    assert (report.added, report.unchanged, fake_encoder.calls["images"]) == (0, 4, before)


@pytest.mark.parametrize("module", [indexer_api, engine_api])
def test_every_exported_name_resolves(module):
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_importing_the_api_packages_loads_no_model_code():
    code = ("import sys, xmodal.indexer, xmodal.engine\n"
            "print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_xmodal_help_imports_no_model_index_or_database_code():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom xmodal.engine.cli.main import cli\n"
            "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy', 'numpy', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
