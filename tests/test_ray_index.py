"""`xmodal index --engine ray` on an in-process Ray instance (ray.init(num_cpus=2), shared by the module):
the library equals the local pipeline's (same rows, vectors to 1e-5, same search results, same skips), a
rerun embeds nothing and recognises moves and edits, and a worker process SIGKILLed mid-run changes nothing
in the result (it is an actor of Ray Data's pool: Ray restarts it and retries its shard)."""
from __future__ import annotations

import json
import logging
import os
import signal
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from PIL import Image

from conftest import draw, vectors_by_path
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.api import index_folders
from xmodal.indexer.storage.library import Library

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def ray_local():
    """One in-process Ray instance with 2 CPUs for the module; its workers register the fake encoder
    (XMODAL_PLUGINS) and take 0.2 s per batch (FAKE_ENCODER_DELAY), so a run lasts long enough to be hit."""
    import ray

    saved = {k: os.environ.get(k) for k in ("XMODAL_PLUGINS", "PYTHONPATH", "FAKE_ENCODER_DELAY")}
    os.environ.update(XMODAL_PLUGINS="fake_xmodal", FAKE_ENCODER_DELAY="0.2",
                      PYTHONPATH=os.pathsep.join(p for p in (TESTS, saved["PYTHONPATH"]) if p))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def collection(root: Path, n: int = 40) -> Path:
    """`n` photos of distinct colours (no ties in a search) in three folders, and one broken file."""
    for i in range(n):
        path = root / f"day{i % 3}" / f"p{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 30 + i), (20 + 5 * i, 220 - 4 * i, (37 * i) % 256)).save(path, quality=95)
    (root / "day0" / "broken.jpg").write_bytes(b"not a photo at all")
    return root


def rows(library: Path) -> list[tuple]:
    with Library(library) as lib:
        records = lib.store.get_images(lib.store.all_image_ids().tolist())
    return sorted((r.path, r.sha256, r.size, r.mtime, r.width, r.height, r.model) for r in records)


def assert_same_library(a: Path, b: Path) -> None:
    assert rows(a) == rows(b)
    va, vb = vectors_by_path(a), vectors_by_path(b)
    for path in vb:
        np.testing.assert_allclose(va[path], vb[path], atol=1e-5)
    with SearchEngine(a) as ea, SearchEngine(b) as eb:
        for query in ("red", "a blue photo", "yellow and green"):
            hits_a = [h.path for h in ea.search_text(query, k=10, rerank_k=0)]
            assert hits_a == [h.path for h in eb.search_text(query, k=10, rerank_k=0)]


def test_a_ray_built_library_equals_the_local_pipelines(ray_local, tmp_path):
    photos = collection(tmp_path / "photos")
    out = CliRunner().invoke(cli, ["index", str(photos), "--library", str(tmp_path / "ray"), "--model",
                                   "fake-colour", "--engine", "ray", "--workers", "2", "--shard-size", "8",
                                   "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["added"] == 40
    assert [s["path"] for s in report["skipped"]] == [str(photos / "day0" / "broken.jpg")]
    local = index_folders(tmp_path / "local", [photos], model="fake-colour")
    assert [s.reason for s in local.skipped] == [s["reason"] for s in report["skipped"]]
    assert_same_library(tmp_path / "ray", tmp_path / "local")
    assert not list((tmp_path / "ray" / "staging").iterdir())  # every shard merged, then deleted


def test_a_ray_run_over_an_indexed_library_embeds_only_edits_and_keeps_moved_photos_vectors(ray_local, tmp_path):
    photos = collection(tmp_path / "photos", n=12)
    lib = tmp_path / "lib"
    index_folders(lib, [photos], model="fake-colour")  # the local pipeline's library, refreshed on Ray
    again = index_folders(lib, [photos], model="fake-colour", engine="ray", workers=2, shard_size=4)
    assert (again.added, again.unchanged) == (0, 12)
    before = {p: v for p, v in vectors_by_path(lib).items()}
    with Library(lib) as l:
        old_id = {r.path: r.id for r in l.store.get_images(l.store.all_image_ids().tolist())}
    shutil.move(photos / "day1" / "p01.jpg", photos / "day2" / "moved.jpg")
    draw(photos / "day0" / "p00.jpg", "white", size=(90, 90))  # edited in place
    third = index_folders(lib, [photos], model="fake-colour", engine="ray", workers=2, shard_size=4)
    assert (third.moved, third.reembedded, third.added, third.removed) == (1, 1, 0, 0)
    with Library(lib) as l:
        new_id = {r.path: r.id for r in l.store.get_images(l.store.all_image_ids().tolist())}
    assert new_id[str(photos / "day2" / "moved.jpg")] == old_id[str(photos / "day1" / "p01.jpg")]
    np.testing.assert_array_equal(vectors_by_path(lib)[str(photos / "day2" / "moved.jpg")],
                                  before[str(photos / "day1" / "p01.jpg")])


def embed_workers() -> list:
    """The actor processes of Ray Data's pool embedding shards now (their process title,
    ray::MapWorker(MapBatches(EmbedWorker)), names the callable class)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("EmbedWorker" in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def test_a_worker_sigkilled_mid_run_changes_nothing_in_the_result(ray_local, tmp_path, caplog):
    photos = collection(tmp_path / "photos")
    killed = []

    def kill_one_worker(done: int, total: int) -> None:
        if done and not killed:
            victims = embed_workers()
            assert victims, "no EmbedWorker process found to kill"
            killed.append(" ".join(victims[0].cmdline()))
            os.kill(victims[0].pid, signal.SIGKILL)

    caplog.set_level(logging.INFO, logger="xmodal.indexer.distributed.ray_runner")
    report = index_folders(tmp_path / "ray", [photos], model="fake-colour", engine="ray", workers=2,
                           shard_size=4, progress=kill_one_worker)
    assert killed and report.added == 40 and report.processed == 41
    assert "MapWorker(MapBatches(EmbedWorker))" in killed[0]  # an actor of Ray Data's pool, not a bare one
    assert any("MapBatches(EmbedWorker): " in r.getMessage() for r in caplog.records)  # the dataset's stats
    index_folders(tmp_path / "local", [photos], model="fake-colour")
    assert_same_library(tmp_path / "ray", tmp_path / "local")


def test_ivf_pq_parts_filled_on_ray_workers_merge_into_the_same_index_as_in_process(ray_local, tmp_path):
    from test_distributed import synthetic_library
    from xmodal.indexer.distributed.ondisk import build_ondisk, ray_pool

    vectors = synthetic_library(tmp_path / "ray")
    synthetic_library(tmp_path / "here")
    with Library(tmp_path / "ray") as lib, lib.writing():
        on_ray = build_ondisk(lib, "images", "IVF8,PQ4x4", pool=ray_pool(ray_local, 2), page=100)  # 6 parts
    with Library(tmp_path / "here") as lib, lib.writing():
        here = build_ondisk(lib, "images", "IVF8,PQ4x4", page=100)
    assert on_ray["params"] == here["params"]
    with Library(tmp_path / "ray") as a, Library(tmp_path / "here") as b:
        sa, ia = a.vector_index("images").search(vectors[:40], 5)
        sb, ib = b.vector_index("images").search(vectors[:40], 5)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-6)


def test_cuda_on_a_ray_cluster_without_gpus_fails_at_once_in_one_line(ray_local, tmp_path):
    photos = collection(tmp_path / "photos", n=3)
    out = CliRunner().invoke(cli, ["index", str(photos), "--library", str(tmp_path / "lib"), "--model",
                                   "fake-colour", "--engine", "ray", "--device", "cuda"])
    assert out.exit_code == 1 and "the Ray cluster has no GPUs" in out.output and "Traceback" not in out.output


def test_a_worker_that_cannot_load_the_model_stops_the_run_with_its_reason(ray_local, tmp_path):
    from fake_encoders import ColourEncoder
    from xmodal.indexer.models.encoders import register_encoder
    from xmodal.indexer.storage.library import LibraryError

    class DriverOnly(ColourEncoder):
        name = "fake-driver-only"  # registered in this process only: the workers do not know it

    register_encoder("fake-driver-only", DriverOnly)
    photos = collection(tmp_path / "photos", n=3)
    with pytest.raises(LibraryError, match="could not load its model: ModelUnavailable: unknown model 'fake-driver-only'"):
        index_folders(tmp_path / "lib", [photos], model="fake-driver-only", engine="ray", workers=1)


def test_a_ray_run_with_ocr_reads_the_text_on_the_driver_and_keeps_ocr_on(ray_local, tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from conftest import SAMPLES
    from test_ocr import printed

    photos = tmp_path / "photos"
    printed(SAMPLES / "grass.jpg", "ZORVIK", photos / "a.jpg")
    shutil.copy(SAMPLES / "cat-chelsea.jpg", photos / "b.jpg")
    library = tmp_path / "lib"
    report = index_folders(library, [photos], "fake-colour", engine="ray", workers=2, shard_size=1, ocr=True)
    assert report.indexed == 2 and report.ocr_read == 2
    with SearchEngine(library) as engine:
        assert engine.library.store.get_meta("ocr") is True  # later runs (and xmodal watch) read text too
        hits = engine.search_text("zorvik", k=1, mode="keyword")
    assert [Path(h.path).name for h in hits] == ["a.jpg"] and "ZORVIK" in hits[0].matched["ocr"].upper()
