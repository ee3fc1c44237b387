"""xmodal.indexer.ingest.walk: which files a scan finds, in which order, and what it reports instead of crashing."""
from __future__ import annotations

import os
import types

import pytest

from xmodal.indexer.records import Skipped
from xmodal.indexer.ingest.walk import IMAGE_EXTENSIONS, iter_image_files


def touch(path) -> str:
    """Create an (empty) file and its parent folders; return its absolute path as str."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb"):
        pass
    return os.path.abspath(path)


def paths_of(items) -> list[str]:
    return [i for i in items if isinstance(i, str)]


def skipped_of(items) -> list[Skipped]:
    return [i for i in items if isinstance(i, Skipped)]


def test_finds_images_in_nested_folders_depth_first_in_sorted_order(tmp_path):
    b = touch(tmp_path / "b.jpg")
    a_inner = touch(tmp_path / "a" / "deeper" / "x.png")
    a_top = touch(tmp_path / "a" / "z.gif")
    c = touch(tmp_path / "c" / "y.webp")

    assert list(iter_image_files(tmp_path)) == [a_inner, a_top, b, c]


def test_ignores_files_without_an_image_extension(tmp_path):
    photo = touch(tmp_path / "photo.jpeg")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "jpg")  # the extension is what counts, not the name
    touch(tmp_path / "movie.mp4")

    assert list(iter_image_files(tmp_path)) == [photo]


def test_extensions_match_case_insensitively(tmp_path):
    expected = [touch(tmp_path / name) for name in ("A.JPG", "b.Png", "c.HEIC", "d.TiFf")]

    assert list(iter_image_files(tmp_path)) == expected


def test_every_documented_extension_is_found(tmp_path):
    expected = sorted(touch(tmp_path / f"img{ext}") for ext in IMAGE_EXTENSIONS)

    assert sorted(iter_image_files(tmp_path)) == expected


def test_hidden_files_and_hidden_folders_are_skipped(tmp_path):
    visible = touch(tmp_path / "visible.jpg")
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / ".thumbnails" / "cached.jpg")
    touch(tmp_path / "album" / ".trash" / "deleted.png")

    assert list(iter_image_files(tmp_path)) == [visible]


def test_a_hidden_root_is_still_walked_because_it_was_asked_for(tmp_path):
    inside = touch(tmp_path / ".photos" / "a.jpg")

    assert list(iter_image_files(tmp_path / ".photos")) == [inside]


def test_folder_named_like_an_image_is_recursed_into_and_not_yielded(tmp_path):
    inside = touch(tmp_path / "holiday.jpg" / "beach.png")

    assert list(iter_image_files(tmp_path)) == [inside]


def test_root_that_is_an_image_file_yields_just_that_file(tmp_path):
    photo = touch(tmp_path / "one.jpg")
    touch(tmp_path / "other.jpg")

    assert list(iter_image_files(photo)) == [photo]


def test_root_that_is_a_non_image_file_is_reported_as_skipped(tmp_path):
    notes = touch(tmp_path / "notes.txt")

    (item,) = iter_image_files(notes)
    assert isinstance(item, Skipped) and item.path == notes
    assert "extension" in item.reason


def test_missing_root_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_image_files(missing))


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    photo = touch(tmp_path / "sub" / "a.jpg")
    monkeypatch.chdir(tmp_path)

    assert list(iter_image_files("sub")) == [photo]


def test_is_a_lazy_generator(tmp_path):
    touch(tmp_path / "a.jpg")

    walk = iter_image_files(tmp_path / "does-not-exist-yet")
    assert isinstance(walk, types.GeneratorType)  # nothing checked until iterated
    touch(tmp_path / "does-not-exist-yet" / "b.jpg")
    assert len(list(walk)) == 1


def test_follows_symbolic_links_to_files_and_folders(tmp_path):
    real = touch(tmp_path / "elsewhere" / "real.jpg")
    library = tmp_path / "library"
    library.mkdir()
    os.symlink(real, library / "link.jpg")
    os.symlink(tmp_path / "elsewhere", library / "linked_folder")

    assert list(iter_image_files(library)) == [
        str(library / "link.jpg"),
        str(library / "linked_folder" / "real.jpg"),
    ]


def test_broken_symbolic_link_is_reported_as_skipped(tmp_path):
    good = touch(tmp_path / "good.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")

    items = list(iter_image_files(tmp_path))

    assert paths_of(items) == [good]
    (skip,) = skipped_of(items)
    assert skip.path == str(tmp_path / "dangling.jpg")
    assert "broken symbolic link" in skip.reason and "gone.jpg" in skip.reason


def test_broken_symbolic_link_without_image_extension_is_ignored(tmp_path):
    os.symlink(tmp_path / "gone.txt", tmp_path / "dangling.txt")

    assert list(iter_image_files(tmp_path)) == []


def test_symbolic_link_loop_terminates_and_yields_each_file_once(tmp_path):
    photo = touch(tmp_path / "a" / "photo.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "back_to_root")  # root/a/back_to_root -> root
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")    # root/a/self -> root/a

    assert list(iter_image_files(tmp_path)) == [photo]


def test_second_link_to_an_already_walked_folder_is_not_walked_again(tmp_path):
    touch(tmp_path / "photos" / "p.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "zz_link_to_photos")

    assert list(iter_image_files(tmp_path)) == [str(tmp_path / "photos" / "p.jpg")]


def test_self_referencing_link_with_image_name_is_skipped_not_fatal(tmp_path):
    good = touch(tmp_path / "good.jpg")
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")  # ELOOP when followed

    items = list(iter_image_files(tmp_path))

    assert paths_of(items) == [good]
    assert [s.path for s in skipped_of(items)] == [str(tmp_path / "loop.jpg")]


def test_non_utf8_file_name_is_yielded_as_native_str(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # Latin-1 'café', invalid as UTF-8
    os.close(os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644))

    (item,) = iter_image_files(tmp_path)

    assert isinstance(item, str)
    assert os.fsencode(item) == raw  # surrogateescape round-trips to the exact bytes
    assert os.path.exists(item)


def test_fifo_with_image_name_is_skipped_not_yielded(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")

    (item,) = iter_image_files(tmp_path)

    assert isinstance(item, Skipped) and "not a regular file" in item.reason


def test_folder_deleted_during_the_walk_is_ignored(tmp_path):
    first = touch(tmp_path / "a" / "1.jpg")
    touch(tmp_path / "b" / "2.jpg")
    walk = iter_image_files(tmp_path)

    assert next(walk) == first
    os.remove(tmp_path / "b" / "2.jpg")
    os.rmdir(tmp_path / "b")  # already listed in the root, but not yet entered
    assert list(walk) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: folder permissions do not block listing")
def test_folder_that_cannot_be_listed_is_reported_and_the_walk_continues(tmp_path):
    locked = tmp_path / "a_locked"
    touch(locked / "secret.jpg")
    after = touch(tmp_path / "b" / "fine.jpg")
    locked.chmod(0)
    try:
        items = list(iter_image_files(tmp_path))
    finally:
        locked.chmod(0o755)

    assert paths_of(items) == [after]
    (skip,) = skipped_of(items)
    assert skip.path == str(locked) and "permission denied" in skip.reason
