"""The patch-token store: fixed slots tagged with the photo's hash, within 16 KB per photo, memory-mapped."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from xmodal.indexer.storage.patch_tokens import MAX_SLOT_BYTES, PatchSpec, PatchStore, PatchTokenError
from xmodal.indexer.models.patch_projector import LITE_RERANK, PatchProjector, default_projector


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def projector(dim: int = 16, width: int = 32, tokens: int = 49, seed: int = 0) -> PatchProjector:
    g = torch.Generator().manual_seed(seed)
    return PatchProjector(torch.randn(width, generator=g), torch.randn(width, dim, generator=g), tokens=tokens)


def test_tokens_round_trip_by_id_and_hash(tmp_path):
    proj = projector()
    store = PatchStore(tmp_path, proj.spec)
    raw = np.random.default_rng(0).normal(size=(3, 49, 32)).astype(np.float32)
    tokens = proj(raw)
    assert tokens.shape == (3, 49, 16) and tokens.dtype == np.float16
    store.write([5, 2, 9], [sha(5), sha(2), sha(9)], tokens)
    got, found = PatchStore(tmp_path).read([9, 2, 5, 7], [sha(9), sha(2), sha(5), sha(7)])  # a fresh reader
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(got[:3], tokens[[2, 1, 0]])
    assert not got[3].any()  # missing -> zeros


def test_a_slot_with_another_photos_hash_reads_as_missing(tmp_path):
    """An id reused after a delete, or a photo edited in place, never gets someone else's tokens."""
    proj = projector()
    store = PatchStore(tmp_path, proj.spec)
    store.write([1], [sha(1)], proj(np.ones((1, 49, 32), np.float32)))
    _, found = store.read([1, 1], [sha(1), sha(100)])
    assert found.tolist() == [True, False]
    _, found = store.read([1], [""])  # no hash at all (the row is gone)
    assert not found.any()


def test_reader_sees_tokens_written_after_it_mapped_the_file(tmp_path):
    proj = projector()
    writer, reader = PatchStore(tmp_path, proj.spec), PatchStore(tmp_path, proj.spec)
    writer.write([0], [sha(0)], proj(np.ones((1, 49, 32), np.float32)))
    assert reader.read([0], [sha(0)])[1].all()
    writer.write([40], [sha(40)], proj(np.ones((1, 49, 32), np.float32)))  # the file grows
    assert reader.read([40], [sha(40)])[1].all()


def test_another_projection_starts_the_tokens_afresh(tmp_path):
    a, b = projector(seed=0), projector(seed=1)
    PatchStore(tmp_path, a.spec).write([0], [sha(0)], a(np.ones((1, 49, 32), np.float32)))
    assert PatchStore(tmp_path).spec == a.spec
    store = PatchStore(tmp_path, b.spec)
    assert store.spec == b.spec and not store.read([0], [sha(0)])[1].any()


def test_wrong_shapes_and_oversized_tokens_are_refused(tmp_path):
    proj = projector()
    with pytest.raises(PatchTokenError, match="do not fit"):
        proj(np.ones((1, 10, 32), np.float32))
    with pytest.raises(PatchTokenError, match="do not match"):
        PatchStore(tmp_path, proj.spec).write([0, 1], [sha(0)], proj(np.ones((1, 49, 32), np.float32)))
    with pytest.raises(PatchTokenError, match="budget"):
        projector(dim=200, width=256)  # 49 x 200 x 2 bytes > 16 KB


def test_slots_a_reembedding_left_dead_give_their_disk_space_back_and_the_rest_still_read(tmp_path):
    spec = PatchSpec(tokens=49, dim=128, source="x")  # 12.5 KB slots, as lite's
    store = PatchStore(tmp_path, spec)
    tokens = np.random.default_rng(0).normal(size=(40, 49, 128)).astype(np.float16)
    store.write(list(range(40)), [sha(i) for i in range(40)], tokens)
    before = store.path.stat()
    if not store.release_below(20):
        pytest.skip("this file system cannot punch holes")
    after = store.path.stat()
    assert after.st_size == before.st_size and after.st_blocks < before.st_blocks * 0.6  # half the file released
    got, found = PatchStore(tmp_path).read(list(range(40)), [sha(i) for i in range(40)])
    assert not found[:20].any() and found[20:].all()  # the dead ids read as missing, the live ones as written
    np.testing.assert_array_equal(got[20:], tokens[20:])


def test_empty_library_reads_nothing(tmp_path):
    tokens, found = PatchStore(tmp_path, PatchSpec(49, 16, "x")).read([0, 1], [sha(0), sha(1)])
    assert not found.any() and tokens.shape == (2, 49, 16)


@pytest.mark.skipif(not LITE_RERANK.exists(), reason="no data/lite-rerank.pt")
def test_the_bundled_projection_fits_the_budget():
    proj = default_projector("lite")
    assert proj.spec.slot_bytes <= MAX_SLOT_BYTES and proj.spec.tokens == 49
    assert default_projector("fake-colour") is None  # only lite libraries store lite patch tokens


def test_text_token_states_round_trip_and_stale_slots_read_as_missing(tmp_path):
    from xmodal.indexer.storage.text_tokens import TextTokenStore

    store = TextTokenStore(tmp_path, width=4)
    a, b = np.arange(12).reshape(3, 4), np.ones((2, 4))
    store.write([7, 2], ["a dog", "a cat"], [a, b])
    store.write([9], ["a bird"], [np.full((5, 4), 0.5)])  # appended after the first batch
    got = TextTokenStore(tmp_path, width=4).read([2, 7, 9, 3, 7], ["a cat", "a dog", "a bird", "x", "another text"])
    np.testing.assert_array_equal(got[0], b)
    np.testing.assert_array_equal(got[1], a)
    assert got[2].shape == (5, 4) and got[3] is None and got[4] is None  # never written; id 7 now holds another text


def test_has_agrees_with_read_for_written_stale_holes_and_out_of_range_slots(tmp_path):
    proj = projector()
    store = PatchStore(tmp_path, proj.spec)
    store.write([0, 3], [sha(0), sha(3)], proj(np.ones((2, 49, 32), np.float32)))  # slots 1 and 2 are holes
    ids, hashes = [0, 1, 2, 3, 3, 50, -1], [sha(0), sha(1), sha(2), sha(3), sha(99), sha(50), sha(0)]
    _, found = store.read(ids, hashes)
    assert found.tolist() == [True, False, False, True, False, False, False]
    assert store.has(ids, hashes).tolist() == found.tolist()
    assert store.has([], []).tolist() == []
    assert store.has([0], [""]).tolist() == [False]  # no hash: never a match


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_slot_whose_tokens_fail_their_checksum_reads_as_missing(tmp_path):
    """Bit rot inside the tokens (the tag intact) is caught by the slot's CRC: never NaN scores at search."""
    proj = projector()
    store = PatchStore(tmp_path, proj.spec)
    store.write([0, 1, 2], [sha(0), sha(1), sha(2)], proj(np.ones((3, 49, 32), np.float32)))
    _flip(store.path, 1 * proj.spec.slot_bytes + 100)
    _flip(store.path, 2 * proj.spec.slot_bytes + proj.spec.slot_bytes - 1)
    ids, hashes = [0, 1, 2], [sha(0), sha(1), sha(2)]
    tokens, found = PatchStore(tmp_path).read(ids, hashes)
    assert found.tolist() == [True, False, False] and not tokens[1:].any()
    assert store.has(ids, hashes).tolist() == [True, True, True]  # tags only: cheap, does not see it
    assert store.has(ids, hashes, verify=True).tolist() == [True, False, False]
    assert store.corrupt(ids, hashes).tolist() == [False, True, True]


def test_a_file_of_the_old_slot_layout_starts_afresh(tmp_path):
    """Layout 1 (8-byte tag, no CRC) has no `layout` in patches.json: its file is dropped, never misread."""
    import json

    proj = projector()
    old = {"tokens": proj.spec.tokens, "dim": proj.spec.dim, "source": proj.spec.source}
    (tmp_path / "patches.json").write_text(json.dumps(old))
    (tmp_path / "patches.f16").write_bytes(bytes(8 + 49 * 16 * 2) * 2)
    assert PatchStore(tmp_path).spec is None  # a reader: no tokens
    store = PatchStore(tmp_path, proj.spec)
    assert not store.path.exists() and json.loads(store.spec_path.read_text())["layout"] == 2


class PatchColourEncoder:
    """The colour fake with raw patch tokens (n, 49, 32): each image's mean colour, spread over channels."""

    def __init__(self, base):
        self.base, self.name, self.dim, self.preprocess = base, base.name, base.dim, base.preprocess

    def encode_images(self, images, **kw):
        return self.base.encode_images(images)

    def encode_texts(self, texts):
        return self.base.encode_texts(texts)

    def encode_images_with_patches(self, images, **kw):
        vectors = self.base.encode_images(images)
        raw = np.repeat(np.tile(vectors[:, None, :], (1, 49, 1)), 4, axis=2).astype(np.float32)
        return vectors, raw


def test_damaged_patch_tokens_are_found_by_check_and_made_again_by_index_verify_and_repair(photos, library,
                                                                                          fake_encoder):
    """A plain `xmodal index` reads only the slots' tags (reading every slot would cost ~12.5 KB a photo on
    every run); `index --verify` and `check --repair` read the tokens and make damaged ones again."""
    from xmodal.indexer.ingest.pipeline import index_images
    from xmodal.indexer.storage.check import check_library, repair
    from xmodal.indexer.storage.library import Library

    encoder, proj = PatchColourEncoder(fake_encoder), projector()
    with Library(library, create=True) as lib:
        assert index_images(lib, [str(photos)], encoder, patches=proj).indexed == 4
    spec = proj.spec

    def damage():
        with Library(library) as lib:
            ids = lib.store.all_image_ids().tolist()[:2]
        for i in ids:
            _flip(library / "patches.f16", i * spec.slot_bytes + 200)

    damage()
    with Library(library) as lib:
        report = check_library(lib)
        assert len(report.corrupt_patches) == 2 and any("patch tokens" in p for p in report.problems)
        assert index_images(lib, None, encoder, patches=proj).patched == 0  # tags only: cheap, as every run
        assert index_images(lib, None, encoder, patches=proj, verify=True).patched == 2
        assert check_library(lib).ok
    damage()
    with Library(library) as lib:
        fixed = repair(lib, lambda: encoder, projector=lambda model: proj)
        assert fixed.patch_tokens == 2
        assert check_library(lib).ok, check_library(lib).problems


def test_text_token_states_failing_their_checksum_read_as_missing(tmp_path):
    from xmodal.indexer.storage.text_tokens import DATA, TextTokenStore

    store = TextTokenStore(tmp_path, width=4)
    store.write([0, 1], ["a dog", "a cat"], [np.ones((3, 4)), np.full((2, 4), 2.0)])
    _flip(tmp_path / DATA, 3 * 4 * 2 + 5)  # inside the second text's states
    got = TextTokenStore(tmp_path, width=4).read([0, 1], ["a dog", "a cat"])
    assert got[0] is not None and got[1] is None  # computed again at query time, never read damaged


def test_text_tokens_of_the_layout_without_checksums_start_afresh(tmp_path):
    from xmodal.indexer.storage.text_tokens import DATA, OLD_INDEX, TextTokenStore

    (tmp_path / OLD_INDEX).write_bytes(bytes(48))
    (tmp_path / DATA).write_bytes(bytes(64))
    store = TextTokenStore(tmp_path, width=4)
    store.write([1], ["a cat"], [np.ones((2, 4))])
    assert not (tmp_path / OLD_INDEX).exists() and (tmp_path / DATA).stat().st_size == 2 * 4 * 2
    np.testing.assert_array_equal(store.read([1], ["a cat"])[0], np.ones((2, 4)))
