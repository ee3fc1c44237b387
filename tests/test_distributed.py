"""The distributed write path without Ray: shards cut with stable names, shard files that round-trip, merges
that give the local pipeline's library and are idempotent, staged shards of files edited since left out,
and the --device checks (the cuda code path exercised with device="cpu")."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_tiny
from conftest import draw, vectors_by_path
from xmodal.indexer.api import index_folders
from xmodal.indexer.distributed.merge import MergeState, merge_shard
from xmodal.indexer.distributed.plan import cut, pending, shard_name
from xmodal.indexer.distributed.shards import ShardError, read_shard, staged, write_shard
from xmodal.indexer.distributed.worker import embed_shard, load_plugins
from xmodal.indexer.ingest.pipeline import IndexReport
from xmodal.indexer.models.base import ModelUnavailable
from xmodal.indexer.models.device import batch_size_for, check_device, place
from xmodal.indexer.storage.library import Library


def test_shards_are_cut_in_order_with_names_that_a_rerun_finds_again():
    paths = [f"/p/{i}.jpg" for i in range(10)]
    shards = cut(paths, 4)
    assert [len(s.paths) for s in shards] == [4, 4, 2]
    assert [p for s in shards for p in s.paths] == paths
    assert [s.name for s in cut(list(paths), 4)] == [s.name for s in shards]  # same work, same names
    assert shard_name(paths[:4]) != shard_name(paths[1:5])
    assert pending(shards, {shards[1].name}) == [shards[0], shards[2]]
    with pytest.raises(ValueError, match="shard_size"):
        cut(paths, 0)


def test_a_shard_file_round_trips_records_vectors_tokens_and_skips(tmp_path, photos, fake_encoder):
    (photos / "broken.jpg").write_bytes(b"not a photo")
    odd = photos / os.fsdecode(b"caf\xe9.jpg")  # a name that is not UTF-8
    draw(odd, "purple")
    paths = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    result = embed_shard("s1", paths, fake_encoder, projector=lambda raw: raw)
    path = write_shard(tmp_path / "staging", result)
    back = read_shard(path)
    assert [im.path for im in back.images] == [im.path for im in result.images]
    assert str(odd) in [im.path for im in back.images]
    assert [(im.sha256, im.size, im.mtime, im.width, im.height, im.inode) for im in back.images] == \
           [(im.sha256, im.size, im.mtime, im.width, im.height, im.inode) for im in result.images]
    np.testing.assert_array_equal(back.vectors, result.vectors)
    assert [s.path for s in back.skipped] == [str(photos / "broken.jpg")]
    assert back.model == "fake-colour" and staged(tmp_path / "staging") == [path]


def test_a_damaged_shard_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "x.shard.npz"
    bad.write_bytes(b"half a file")
    with pytest.raises(ShardError, match="x.shard.npz"):
        read_shard(bad)


def _merge_all(library: Path, root: Path, encoder, shard_size=2, check_current=False) -> IndexReport:
    from xmodal.indexer.ingest.pipeline import plan

    report = IndexReport()
    with Library(library, create=True) as lib, lib.writing():
        lib.bind_model(encoder.name, encoder.dim)
        lib.add_roots([str(root)])
        todo, changed, _ = plan(lib, [str(root)], report)
        state = MergeState(changed, set())
        for shard in cut(todo, shard_size):
            result = embed_shard(shard.name, list(shard.paths), encoder)
            merge_shard(lib, result, state, report, encoder.name, check_current=check_current)
            merge_shard(lib, result, state, report, encoder.name)  # again, as after a driver killed mid-merge
        lib.save("images")
    return report


def test_merged_shards_give_the_local_pipelines_library_and_a_second_merge_adds_nothing(tmp_path, photos,
                                                                                         fake_encoder):
    report = _merge_all(tmp_path / "merged", photos, fake_encoder)
    index_folders(tmp_path / "local", [photos], model="fake-colour")
    assert report.added == 4
    merged, local = vectors_by_path(tmp_path / "merged"), vectors_by_path(tmp_path / "local")
    assert sorted(merged) == sorted(local)
    for path in local:
        np.testing.assert_allclose(merged[path], local[path], atol=1e-6)
    with Library(tmp_path / "merged") as lib:
        assert lib.store.count_images() == 4


def test_a_staged_shard_of_a_file_edited_since_leaves_that_file_out(tmp_path, photos, fake_encoder):
    paths = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    result = embed_shard("s", paths, fake_encoder)
    draw(Path(paths[0]), "white", size=(70, 70))  # edited after the worker read it
    os.utime(paths[0], (1, 1))
    with Library(tmp_path / "lib", create=True) as lib, lib.writing():
        lib.bind_model(fake_encoder.name, fake_encoder.dim)
        handled = merge_shard(lib, result, MergeState({}, set()), IndexReport(), fake_encoder.name,
                              check_current=True)
        assert paths[0] not in handled and lib.store.count_images() == len(paths) - 1


def test_a_shard_of_another_model_is_refused(tmp_path, photos, fake_encoder):
    result = embed_shard("s", [str(photos / "red.jpg")], fake_encoder)
    result.model = "lite"
    with Library(tmp_path / "lib", create=True) as lib, lib.writing():
        with pytest.raises(ValueError, match="embedded with 'lite'"):
            merge_shard(lib, result, MergeState({}, set()), IndexReport(), "fake-colour")


def test_plugins_named_in_the_environment_are_imported(monkeypatch):
    from xmodal.indexer.models import encoders

    # importing fake_xmodal registers its own "fake-colour": the registry is put back after this test, or
    # later tests' `fake_encoder` would no longer be the encoder their searches get
    for name in ("_REGISTRY", "_CACHE", "_QUERY", "_QUERY_CACHE"):
        monkeypatch.setattr(encoders, name, dict(getattr(encoders, name)))
    monkeypatch.setenv("XMODAL_PLUGINS", "fake_xmodal, json")
    assert load_plugins() == ["fake_xmodal", "json"]
    with pytest.raises(ModuleNotFoundError):
        load_plugins("no_such_plugin_module")


def test_device_names_are_checked_and_cuda_without_a_gpu_is_a_clear_error(fake_encoder):
    assert check_device("CPU") == "cpu"
    assert check_device("cuda:1", here=False) == "cuda:1"  # a Ray driver: the workers have the GPUs
    with pytest.raises(ModelUnavailable, match="not cpu, cuda or cuda:N"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="sees no CUDA GPU"):
            check_device("cuda")
    with pytest.raises(ModelUnavailable, match="sees no CUDA GPU|fake-colour cannot run on cuda"):
        place(fake_encoder, "cuda")  # no GPU here, or a model without a torch path: refused either way
    assert place(fake_encoder, "cpu") is fake_encoder
    assert batch_size_for("cpu", 16) == 16 and batch_size_for("cuda", 16) == 256


def test_a_clip_checkpoint_placed_on_a_device_gives_the_same_embeddings(tmp_path):
    """The --device code path (inputs to the device, outputs back to the CPU) run with device="cpu": the GPU
    run of the same code is measured in benchmarks/ray_scaling.py where a GPU is present."""
    from xmodal.indexer.models.clip import HFClipEncoder

    folder = hf_tiny.make_clip(tmp_path / "clip")
    images = [Image.new("RGB", (48, 40), c) for c in ((200, 30, 30), (30, 30, 200))]
    plain = HFClipEncoder(str(folder))
    before_images, before_texts = plain.encode_images(images), plain.encode_texts(["a red car"])
    moved = place(HFClipEncoder(str(folder)), "cpu")
    assert moved.device == torch.device("cpu")
    np.testing.assert_allclose(moved.encode_images(images), before_images, atol=1e-3)
    np.testing.assert_allclose(moved.encode_texts(["a red car"]), before_texts, atol=1e-3)


def synthetic_library(root: Path, n: int = 600, dim: int = 8, seed: int = 0) -> np.ndarray:
    """A library of `n` stored random unit vectors (records without files): what an index build reads."""
    from datetime import datetime

    from xmodal.indexer.records import DecodedImage

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    images = [DecodedImage(f"/nowhere/{i}.jpg", 1, 1.0, f"{i:064x}", 1, 1, datetime(2020, 1, 1), None)
              for i in range(n)]
    with Library(root, create=True) as lib, lib.writing():
        lib.bind_model("fake-colour", dim)
        for s in range(0, n, 200):
            lib.add_images(images[s:s + 200], vectors[s:s + 200], "fake-colour")
        lib.save("images")
    return vectors


def test_an_ivf_built_on_disk_searches_like_exact_search_and_its_lists_stay_in_the_ivfdata_file(tmp_path):
    import faiss

    from xmodal.indexer.distributed.ondisk import build_ondisk, wants_ondisk

    assert wants_ondisk("OPQ64_256,IVF16384_HNSW32,PQ64x8") and not wants_ondisk("IVF4096,SQ8")
    vectors = synthetic_library(tmp_path / "lib")
    with Library(tmp_path / "lib") as lib, lib.writing():
        out = build_ondisk(lib, "images", "IVF8,Flat")
    assert out["vectors"] == 600 and out["recall_at_k"] >= 0.95
    assert (tmp_path / "lib" / out["on_disk"]).stat().st_size >= 600 * 8 * 4  # the vectors are in the lists file
    assert not (tmp_path / "lib" / "images.parts").exists()
    with Library(tmp_path / "lib") as lib:  # a search process
        index = lib.vector_index("images")
        ivf = faiss.extract_index_ivf(index._index.index)
        assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
        scores, ids = index.search(vectors[:50], 1)
        assert (ids[:, 0] == lib.store.all_image_ids()[:50]).all()  # each vector finds its own row


def test_an_ondisk_build_refuses_a_factory_without_lists(tmp_path):
    from xmodal.indexer.distributed.ondisk import build_ondisk

    synthetic_library(tmp_path / "lib", n=50)
    with Library(tmp_path / "lib") as lib, lib.writing():
        with pytest.raises(ValueError, match="no inverted lists"):
            build_ondisk(lib, "images", "HNSW32")


def test_an_index_built_on_disk_takes_later_additions_and_removals_in_memory(tmp_path):
    """FAISS's on-disk lists crash when grown in place: the first change copies them into memory."""
    from datetime import datetime

    from xmodal.indexer.distributed.ondisk import build_ondisk
    from xmodal.indexer.records import DecodedImage

    synthetic_library(tmp_path / "lib")
    with Library(tmp_path / "lib") as lib, lib.writing():
        build_ondisk(lib, "images", "IVF8,Flat")
    extra = np.eye(8, dtype=np.float32)[:6]
    images = [DecodedImage(f"/nowhere/new{i}.jpg", 1, 1.0, f"{i + 9000:064x}", 1, 1, datetime(2021, 1, 1), None)
              for i in range(6)]
    with Library(tmp_path / "lib") as lib, lib.writing():
        ids, _ = lib.add_images(images, extra, "fake-colour")
        lib.delete_images(ids[:2])
        lib.save("images")
    with Library(tmp_path / "lib") as lib:
        index = lib.vector_index("images")
        assert index.ntotal == 604 and not any(lib.repaired["images"].values())
        _, found = index.search(extra[2:], 1)
        assert found[:, 0].tolist() == ids[2:]


def test_index_device_errors_are_one_line_from_the_cli(tmp_path, photos):
    from click.testing import CliRunner

    from xmodal.engine.cli.main import cli

    out = CliRunner().invoke(cli, ["index", str(photos), "--library", str(tmp_path / "lib"), "--model",
                                   "fake-colour", "--device", "tpu"])
    assert out.exit_code == 1 and "not cpu, cuda or cuda:N" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(cli, ["index", str(photos), "--library", str(tmp_path / "lib"), "--model",
                                   "fake-colour", "--engine", "spark"])
    assert out.exit_code == 2 and "spark" in out.output


def test_the_local_pipeline_indexes_a_clip_checkpoint_through_the_device_path(tmp_path, photos):
    """index_folders(device=...) places the encoder and sizes the batch: run with device="cpu" here."""
    folder = hf_tiny.make_clip(tmp_path / "clip")
    plain = index_folders(tmp_path / "plain", [photos], model=str(folder))
    placed = index_folders(tmp_path / "placed", [photos], model=str(folder), device="cpu")
    assert plain.added == placed.added == 4
    a, b = vectors_by_path(tmp_path / "plain"), vectors_by_path(tmp_path / "placed")
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-3)


def test_info_names_the_lists_file_of_an_index_built_on_disk_in_the_cli_api_and_web(tmp_path):
    import json

    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from xmodal.engine.cli.main import cli
    from xmodal.engine.search.engine import SearchEngine
    from xmodal.engine.web.server import create_app
    from xmodal.indexer.distributed.ondisk import build_ondisk

    synthetic_library(tmp_path / "lib")
    with Library(tmp_path / "lib") as lib, lib.writing():
        name = build_ondisk(lib, "images", "IVF8,Flat")["on_disk"]
    out = CliRunner().invoke(cli, ["info", "--library", str(tmp_path / "lib"), "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["indexes"]["images"]["lists_on_disk"] == name and name in shown["bytes"]
    with SearchEngine(tmp_path / "lib") as engine:
        assert engine.info()["indexes"]["images"]["lists_on_disk"] == name
    with TestClient(create_app(tmp_path / "lib", allowed_hosts=("testserver",))) as client:
        assert client.get("/api/info").json()["indexes"]["images"]["lists_on_disk"] == name
