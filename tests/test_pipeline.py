"""The write path end to end with the fake encoder: walk -> decode -> encode -> store + FAISS."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import draw
from xmodal.indexer.storage.library import Library, LibraryError
from xmodal.indexer.ingest.pipeline import index_images, index_texts


def _index(library: Path, root: Path, encoder):
    with Library(library, create=True) as lib:
        return index_images(lib, [str(root)], encoder)


def test_indexing_a_folder_stores_one_row_and_one_vector_per_photo(photos, library, fake_encoder):
    report = _index(library, photos, fake_encoder)
    assert (report.indexed, report.unchanged, report.removed, report.skipped) == (4, 0, 0, [])
    with Library(library) as lib:
        assert lib.store.count_images() == 4
        assert sorted(lib.vector_index("images").ids()) == sorted(lib.store.all_image_ids())
        rec = lib.store.get_images(lib.store.all_image_ids().tolist())
        assert {Path(r.path).name for r in rec} == {"red.jpg", "green.png", "blue.jpg", "yellow.webp"}
        assert all(r.model == "fake-colour" and r.width == 64 and r.height == 48 for r in rec)


def test_rerun_embeds_only_new_or_changed_files_and_drops_deleted_ones(photos, library, fake_encoder):
    _index(library, photos, fake_encoder)
    fake_encoder.calls["images"] = 0
    again = _index(library, photos, fake_encoder)
    assert (again.indexed, again.unchanged, again.removed) == (0, 4, 0)
    assert fake_encoder.calls["images"] == 0

    draw(photos / "new" / "purple.jpg", "purple")
    (photos / "green.png").unlink()
    draw(photos / "red.jpg", "cyan", size=(80, 80))  # edited in place: new size
    os.utime(photos / "red.jpg", (1e9, 1e9))
    third = _index(library, photos, fake_encoder)
    assert (third.indexed, third.unchanged, third.removed) == (2, 2, 1)
    with Library(library) as lib:
        recs = {Path(r.path).name: r for r in lib.store.get_images(lib.store.all_image_ids().tolist())}
        assert set(recs) == {"red.jpg", "blue.jpg", "yellow.webp", "purple.jpg"}
        assert recs["red.jpg"].width == 80
        assert lib.vector_index("images").ntotal == 4


def _bomb_png(path: Path, side: int = 40000) -> None:
    """A tiny PNG whose header declares side x side pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_broken_files_are_reported_and_every_good_photo_is_indexed(photos, library, fake_encoder):
    (photos / "empty.jpg").write_bytes(b"")
    good = (photos / "red.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (photos / "page.jpg").write_text("<html><body>not a photo</body></html>")
    (photos / "noise.png").write_bytes(np.random.default_rng(0).bytes(5000))
    _bomb_png(photos / "bomb.png")
    draw(photos / "x.jpg" / "inside.jpg", "white")  # a folder named like a photo, holding one
    os.symlink(photos / "missing.jpg", photos / "dangling.jpg")
    draw(Path(os.fsdecode(os.fsencode(str(photos)) + b"/caf\xe9.jpg")), "black")

    report = _index(library, photos, fake_encoder)
    skipped = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(skipped) == {"empty.jpg", "truncated.jpg", "page.jpg", "noise.png", "bomb.png", "dangling.jpg"}
    assert "1,600,000,000 pixels" in skipped["bomb.png"]
    assert report.indexed == 6  # 4 photos + x.jpg/inside.jpg + the non-UTF-8 name
    with Library(library) as lib:
        paths = [r.path for r in lib.store.get_images(lib.store.all_image_ids().tolist())]
    assert os.fsdecode(os.fsencode(str(photos)) + b"/caf\xe9.jpg") in paths
    assert str(photos / "x.jpg" / "inside.jpg") in paths


def test_a_photo_that_breaks_after_indexing_keeps_its_entry(photos, library, fake_encoder):
    _index(library, photos, fake_encoder)
    (photos / "blue.jpg").write_bytes(b"garbage")
    report = _index(library, photos, fake_encoder)
    assert [Path(s.path).name for s in report.skipped] == ["blue.jpg"]
    with Library(library) as lib:
        assert lib.store.count_images() == 4


def test_vectors_that_never_reached_the_faiss_file_are_restored_from_the_store(photos, library, fake_encoder):
    _index(library, photos, fake_encoder)
    with Library(library) as lib:  # simulate a crash after the store commit, before the index save
        index = lib.vector_index("images")
        expected = {int(i): v for i, v in zip(index.ids(), index.reconstruct(index.ids()))}
        index.remove(index.ids()[:2])
        index.add(np.array([999]), np.eye(8, dtype=np.float32)[:1])  # and a vector without a row
        index.save(lib.index_path("images"), generation=index.generation)  # same generation: only a full diff sees it
    fake_encoder.calls["images"] = 0
    report = _index(library, photos, fake_encoder)
    assert (report.indexed, report.unchanged) == (0, 4) and fake_encoder.calls["images"] == 0
    with Library(library) as lib:
        index = lib.vector_index("images")
        assert sorted(index.ids()) == sorted(lib.store.all_image_ids()) == sorted(expected)
        np.testing.assert_allclose(index.reconstruct(sorted(expected)), np.stack([expected[i] for i in sorted(expected)]))


def test_a_library_refuses_vectors_from_another_model(photos, library, fake_encoder):
    _index(library, photos, fake_encoder)
    with Library(library) as lib:
        with pytest.raises(LibraryError, match="built with model 'fake-colour'"):
            lib.bind_model("lite", 256)


def test_a_non_empty_folder_that_is_not_a_library_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LibraryError, match="not an xmodal library"):
        Library(tmp_path, create=True)


def test_indexing_a_text_file_again_replaces_its_texts(tmp_path, library, fake_encoder):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a red car\na blue sky\n")
    with Library(library, create=True) as lib:
        assert index_texts(lib, str(corpus), fake_encoder).indexed == 2
        corpus.write_text("a green field\n")
        again = index_texts(lib, str(corpus), fake_encoder)
        assert (again.indexed, again.replaced) == (1, 2)
        texts = lib.store.get_texts(lib.store.all_text_ids().tolist())
        assert [t.text for t in texts] == ["a green field"]
        assert lib.vector_index("texts").ntotal == 1
