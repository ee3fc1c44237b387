"""The package people install works: `python -m build` makes an sdist and, from it, a wheel; the wheel,
installed into a fresh virtualenv in a folder outside the repository, carries the lite model's weights
and sample photos (never the base model's files: they ship in the companion wheel xmodal-base), indexes
12 photos and searches them by text, by photo and for texts, explains a match, and serves the Python API,
all from another folder. Its import names are ours alone (xmodal.*).

Dependencies install the ordinary way (pip's cache, or the registry); torch is pinned to the CPU build
first, as the Makefile does. Minutes, so marked slow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"

pytestmark = pytest.mark.slow


def run(args, cwd: Path, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=REPO)
    return {"wheel": next(out.glob("xmodal-*.whl")), "sdist": next(out.glob("xmodal-*.tar.gz"))}


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> Path:
    """A fresh virtualenv outside the repository with the wheel installed: its bin folder."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run(pip + ["torch==2.13.0"], cwd=venv.parent)
    run(pip + [dists["wheel"]], cwd=venv.parent)
    return venv / "bin"


def test_the_wheel_carries_the_weights_samples_and_page_under_our_namespace_only(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    for needed in ("xmodal/data/lite-align.pt", "xmodal/data/lite-rerank.pt", "xmodal/data/lite-calibration.json",
                   "xmodal/data/samples/cat-chelsea.jpg",
                   "xmodal/engine/web/static/index.html", "xmodal/engine/cli/main.py",
                   "xmodal/indexer/models/lite_encoder.py"):
        assert needed in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"xmodal", f"{dists['wheel'].name.split('-py')[0]}.dist-info"}
    # the base model's files ship in the companion wheel (packaging/xmodal-base, tests/test_base_wheel.py)
    assert [n for n in names if n.rsplit("/", 1)[-1].startswith("base-") or "xmodal_base" in n] == []


def test_the_sdist_carries_the_weights_too(dists):
    import tarfile

    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[-1] for n in tar.getnames()}
    assert {"data/lite-align.pt", "data/lite-rerank.pt", "setup.py", "setup.cfg"} <= names
    assert [n for n in names if n.startswith("packaging/") or n.rsplit("/", 1)[-1].startswith("base-")] == []


def test_the_installed_wheel_indexes_and_searches_from_any_folder(installed, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.txt", "*.md"))
    for name, colour in [("red", (220, 20, 20)), ("green", (20, 200, 20)), ("blue", (20, 20, 220)),
                         ("yellow", (230, 230, 20))]:
        Image.new("RGB", (320, 240), colour).save(photos / f"{name}.jpg")
    assert len(list(photos.iterdir())) == 12
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    lib = ["--library", tmp_path / "library"]
    xmodal = installed / "xmodal"

    indexed = json.loads(run([xmodal, "index", photos, *lib, "--json"], cwd=elsewhere, env=env).stdout)
    assert indexed["added"] == 12 and indexed["skipped"] == []
    captions = tmp_path / "captions.txt"
    shutil.copy(SAMPLES / "captions.txt", captions)
    run([xmodal, "index-texts", captions, *lib, "--json"], cwd=elsewhere, env=env)

    hits = json.loads(run([xmodal, "search", "a tabby cat", "-k", "3", *lib, "--json"], cwd=elsewhere, env=env).stdout)
    assert Path(hits[0]["path"]).name == "cat-chelsea.jpg"
    assert hits[0]["match"] is not None  # reranked by the bundled cross-attention model
    like = json.loads(run([xmodal, "search", "--image", photos / "rocket-launch.jpg", "-k", "2", *lib, "--json"],
                          cwd=elsewhere, env=env).stdout)
    assert Path(like[0]["path"]).name == "rocket-launch.jpg"
    texts = json.loads(run([xmodal, "search", "--image", photos / "cat-chelsea.jpg", "--target", "texts", "-k", "1",
                            *lib, "--json"], cwd=elsewhere, env=env).stdout)
    assert "cat" in texts[0]["text"]
    explained = json.loads(run([xmodal, "explain", "a cup of coffee", photos / "coffee-cup.jpg", "-o",
                                tmp_path / "explain.png", *lib, "--json"], cwd=elsewhere, env=env).stdout)
    assert (tmp_path / "explain.png").stat().st_size > 0 and explained["words"]

    api = ("import sys\nfrom xmodal.engine import SearchEngine\n"
           "with SearchEngine(sys.argv[1]) as e:\n    print(e.search_text('a cup of coffee', k=1)[0].path)")
    found = run([installed / "python", "-c", api, tmp_path / "library"], cwd=elsewhere, env=env).stdout
    assert Path(found.strip()).name == "coffee-cup.jpg"
    for generic in ("engine", "indexer", "data"):  # the repository's folder names are not import names
        probe = subprocess.run([installed / "python", "-c", f"import {generic}"], cwd=elsewhere, env=env,
                               capture_output=True, text=True)
        assert probe.returncode != 0, f"the wheel installed a top-level package {generic!r}"
