"""xmodal.engine.eval.datasets: image-caption benchmarks in the captions.txt and Karpathy JSON layouts."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from xmodal.engine.eval.datasets import CaptionDataset, DatasetError, load_captions_csv, load_dataset, load_karpathy

FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"


def make_csv_dataset(root: Path, rows: list[tuple[str, str]], extra_images: tuple[str, ...] = ()) -> Path:
    """ROOT/images/<one empty file per image> + ROOT/captions.txt written with the csv module."""
    (root / "images").mkdir(parents=True)
    for name in {image for image, _ in rows} | set(extra_images):
        (root / "images" / name).write_bytes(b"")
    with open(root / "captions.txt", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return root


ROWS = [
    ("b.jpg", "A dog, wet, runs ."),
    ("a.jpg", 'A "quoted" cat'),
    ("b.jpg", "  Second caption of b  "),
    ("c.jpg", "A caption\nspanning two lines"),
    ("a.jpg", "Another cat"),
]


def make_karpathy(root: Path, entries: list[dict], name: str = "dataset_flickr8k.json") -> Path:
    for entry in entries:
        path = root / "images" / entry.get("filepath", "") / entry["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    json_path = root / name
    json_path.write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    return json_path


def entry(filename: str, split: str, *captions: str, filepath: str | None = None) -> dict:
    e = {"filename": filename, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}
    if filepath:
        e["filepath"] = filepath
    return e


# -- captions.txt layout


def test_captions_are_grouped_by_image_in_order_of_first_appearance(tmp_path):
    ds = load_captions_csv(make_csv_dataset(tmp_path / "tiny", ROWS))
    assert isinstance(ds, CaptionDataset)
    assert ds.name == "tiny" and ds.image_dir == tmp_path / "tiny" / "images"
    assert ds.images == ["b.jpg", "a.jpg", "c.jpg"]
    assert ds.captions == ["A dog, wet, runs .", "Second caption of b", 'A "quoted" cat', "Another cat",
                           "A caption\nspanning two lines"]
    assert ds.caption_image.dtype == np.int64
    assert ds.caption_image.tolist() == [0, 0, 1, 1, 2]
    assert ds.image_paths()[1] == tmp_path / "tiny" / "images" / "a.jpg"


def test_a_split_file_restricts_and_orders_the_images(tmp_path):
    root = make_csv_dataset(tmp_path / "tiny", ROWS)
    (root / "dev.txt").write_text("c.jpg\n\n  b.jpg \nc.jpg\n")
    ds = load_captions_csv(root, root / "dev.txt")
    assert ds.name == "tiny:dev"
    assert ds.images == ["c.jpg", "b.jpg"]  # split order, blank line and duplicate ignored
    assert [ds.images[i] for i in ds.caption_image] == ["c.jpg", "b.jpg", "b.jpg"]


def test_a_split_file_path_may_be_relative_to_the_dataset_root(tmp_path):
    root = make_csv_dataset(tmp_path / "tiny", ROWS)
    (root / "splits").mkdir()
    (root / "splits" / "dev.txt").write_text("a.jpg\n")
    assert load_captions_csv(root, "splits/dev.txt").images == ["a.jpg"]


def test_split_names_without_captions_are_listed_in_the_error(tmp_path):
    root = make_csv_dataset(tmp_path / "tiny", ROWS)
    names = [f"missing{i}.jpg" for i in range(7)]
    (root / "dev.txt").write_text("a.jpg\n" + "\n".join(names))
    with pytest.raises(DatasetError, match=r"7 image\(s\) in split .*'missing0\.jpg'.*'missing4\.jpg' and 2 more"):
        load_captions_csv(root, root / "dev.txt")


def test_an_image_with_captions_but_no_file_is_an_error(tmp_path):
    root = make_csv_dataset(tmp_path / "tiny", ROWS)
    (root / "images" / "c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) listed in .*captions\.txt are not in .*images: 'c\.jpg'"):
        load_captions_csv(root)


def test_missing_captions_file_explains_the_expected_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"captions\.txt not found; expected .*ROOT/images/ \+ ROOT/captions\.txt"):
        load_captions_csv(tmp_path)


def test_a_captions_file_with_the_wrong_header_is_refused(tmp_path):
    root = make_csv_dataset(tmp_path / "tiny", ROWS)
    (root / "captions.txt").write_text("file,text\na.jpg,hello\n")
    with pytest.raises(DatasetError, match="header 'image,caption'"):
        load_captions_csv(root)


# -- Karpathy layout


def test_karpathy_test_split_with_subfolders(tmp_path):
    json_path = make_karpathy(tmp_path, [
        entry("1.jpg", "train", "train caption"),
        entry("2.jpg", "test", " first of 2 ", "second of 2", filepath="val2014"),
        entry("3.jpg", "test", "only of 3"),
        entry("4.jpg", "restval", "restval caption"),
    ])
    ds = load_karpathy(json_path)
    assert ds.name == "flickr8k:test"
    assert ds.image_dir == tmp_path / "images"
    assert ds.images == ["val2014/2.jpg", "3.jpg"]
    assert ds.captions == ["first of 2", "second of 2", "only of 3"]
    assert ds.caption_image.tolist() == [0, 0, 1]
    assert load_karpathy(json_path, split="restval").images == ["4.jpg"]


def test_karpathy_with_an_explicit_image_dir(tmp_path):
    json_path = make_karpathy(tmp_path / "elsewhere", [entry("1.jpg", "val", "a")])
    ds = load_karpathy(json_path, split="val", image_dir=tmp_path / "elsewhere" / "images")
    assert ds.image_paths() == [tmp_path / "elsewhere" / "images" / "1.jpg"]


def test_karpathy_unknown_or_empty_split_names_the_choices(tmp_path):
    json_path = make_karpathy(tmp_path, [entry("1.jpg", "train", "a")])
    with pytest.raises(DatasetError, match="unknown Karpathy split 'dev'; use one of train, val, test, restval"):
        load_karpathy(json_path, split="dev")
    with pytest.raises(DatasetError, match=r"no images in split 'test' \(splits present: train\)"):
        load_karpathy(json_path, split="test")


def test_karpathy_entry_without_sentences_is_reported_by_position(tmp_path):
    json_path = tmp_path / "dataset_x.json"
    json_path.write_text(json.dumps({"images": [{"filename": "1.jpg", "split": "test"}]}))
    with pytest.raises(DatasetError, match="image entry 0 lacks 'sentences'"):
        load_karpathy(json_path)


def test_a_json_that_is_not_karpathy_is_refused(tmp_path):
    (tmp_path / "dataset_x.json").write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match="no 'images' list"):
        load_karpathy(tmp_path / "dataset_x.json")


# -- load_dataset dispatch


def test_load_dataset_reads_a_karpathy_json_given_directly(tmp_path):
    json_path = make_karpathy(tmp_path, [entry("1.jpg", "test", "a"), entry("2.jpg", "val", "b")])
    assert load_dataset(json_path).images == ["1.jpg"]
    assert load_dataset(json_path, karpathy_split="val").images == ["2.jpg"]


def test_load_dataset_finds_the_karpathy_json_in_a_folder_when_a_split_is_asked(tmp_path):
    make_karpathy(tmp_path, [entry("1.jpg", "val", "a")], name="dataset_flickr30k.json")
    ds = load_dataset(tmp_path, karpathy_split="val")
    assert ds.name == "flickr30k:val" and ds.image_dir == tmp_path / "images"


def test_load_dataset_uses_captions_txt_without_a_karpathy_split(tmp_path):
    root = make_csv_dataset(tmp_path / "tiny", ROWS)
    make_karpathy(root, [entry("a.jpg", "test", "ignored")])  # present but not asked for
    assert load_dataset(root).images == ["b.jpg", "a.jpg", "c.jpg"]


def test_load_dataset_explains_the_layouts_when_nothing_matches(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; expected either"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(DatasetError, match=r"needs exactly one dataset_\*\.json .*found: none"):
        load_dataset(tmp_path, karpathy_split="test")
    with pytest.raises(DatasetError, match="images not found; expected either"):
        load_dataset(tmp_path)


def test_real_flickr8k_dev_split_has_1000_images_and_5000_captions():
    if not (FLICKR8K / "captions.txt").exists():
        pytest.skip(f"Flickr8k not available at {FLICKR8K}")
    ds = load_dataset(FLICKR8K, split_file=FLICKR8K / "splits" / "dev.txt")
    assert len(ds.images) == 1000 and len(ds.captions) == 5000
    assert np.bincount(ds.caption_image).tolist() == [5] * 1000
    assert ds.images[0] == (FLICKR8K / "splits" / "dev.txt").read_text().split()[0]
