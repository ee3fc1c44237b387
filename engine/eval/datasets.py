"""Image-caption benchmark datasets (Flickr8k, Flickr30k, COCO) in the two layouts they are shipped in.

* captions.txt layout (the Kaggle Flickr8k/30k packaging)::

      ROOT/images/<file>.jpg
      ROOT/captions.txt          CSV, header ``image,caption``, several rows per image
      ROOT/splits/dev.txt        optional: image file names, one per line

* Karpathy layout: ``dataset_flickr8k.json`` / ``dataset_flickr30k.json`` / ``dataset_coco.json`` with
  ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``; images live under an image
  directory, in ``filepath/`` subfolders for COCO.

Every loader returns a ``CaptionDataset``: images in a fixed order, captions grouped by image in that order,
and ``caption_image[i]`` = index of caption ``i``'s image. Loaders check that every image file exists, so
a benchmark never silently runs on part of a dataset.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KARPATHY_SPLITS = ("train", "val", "test", "restval")
_SHOW = 5  # how many offending names an error message lists

CAPTIONS_LAYOUT = (
    "expected either ROOT/images/ + ROOT/captions.txt (CSV with header image,caption), "
    "or a Karpathy dataset_*.json (pass it, or ROOT containing it together with a Karpathy split)"
)


class DatasetError(Exception):
    """A dataset is missing files, malformed, or asks for images it does not have."""


@dataclass
class CaptionDataset:
    """An image-caption benchmark: ``captions[i]`` describes ``images[caption_image[i]]``."""

    name: str
    image_dir: Path
    images: list[str]
    captions: list[str]
    caption_image: np.ndarray

    def image_paths(self) -> list[Path]:
        """Absolute paths of the images, in order."""
        return [self.image_dir / name for name in self.images]

    def __len__(self) -> int:
        return len(self.images)


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def _check_files(image_dir: Path, images: list[str], source: Path) -> None:
    missing = [name for name in images if not (image_dir / name).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) listed in {source} are not in {image_dir}: {_listing(missing)}; "
            "check the image folder or the dataset download"
        )


def _build(name: str, image_dir: Path, grouped: dict[str, list[str]], order: list[str]) -> CaptionDataset:
    captions: list[str] = []
    owners: list[int] = []
    for index, image in enumerate(order):
        captions.extend(grouped[image])
        owners.extend([index] * len(grouped[image]))
    return CaptionDataset(name, image_dir, list(order), captions, np.asarray(owners, dtype=np.int64))


def read_split_file(split_file: str | Path) -> list[str]:
    """Image names listed one per line; blank lines ignored, duplicates dropped (keeping the first)."""
    path = Path(split_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read split file {path} ({exc.strerror}); expected one image name per line") from exc
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not names:
        raise DatasetError(f"split file {path} lists no images; expected one image file name per line")
    return names


def load_captions_csv(root: str | Path, split_file: str | Path | None = None) -> CaptionDataset:
    """Load the ``ROOT/images`` + ``ROOT/captions.txt`` layout.

    Images come in the order of ``split_file`` when given (a path, or a path relative to ROOT), else in
    order of first appearance in captions.txt. Every name in the split file must have captions, otherwise
    ``DatasetError`` lists the first few missing ones. Caption text is stripped; empty captions are skipped.
    """
    root = Path(root)
    image_dir, captions_file = root / "images", root / "captions.txt"
    for needed in (image_dir, captions_file):
        if not needed.exists():
            raise DatasetError(f"{needed} not found; {CAPTIONS_LAYOUT}")
    grouped: dict[str, list[str]] = {}
    empty = 0
    with open(captions_file, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DatasetError(f"{captions_file} must start with the header 'image,caption', got {reader.fieldnames}")
        for row in reader:
            image, caption = (row["image"] or "").strip(), (row["caption"] or "").strip()
            if not image:
                raise DatasetError(f"{captions_file} line {reader.line_num} has no image name")
            if not caption:
                empty += 1
                continue
            grouped.setdefault(image, []).append(caption)
    if empty:
        log.warning("%s: skipped %d empty caption(s)", captions_file, empty)
    if not grouped:
        raise DatasetError(f"{captions_file} has no captions; {CAPTIONS_LAYOUT}")

    name = root.name
    if split_file is None:
        order = list(grouped)
    else:
        split_path = Path(split_file)
        if not split_path.exists() and (root / split_path).exists():
            split_path = root / split_path
        order = read_split_file(split_path)
        unknown = [image for image in order if image not in grouped]
        if unknown:
            raise DatasetError(
                f"{len(unknown)} image(s) in split {split_path} have no captions in {captions_file}: "
                f"{_listing(unknown)}; is the split file for this dataset?"
            )
        name = f"{root.name}:{split_path.stem}"
    _check_files(image_dir, order, captions_file)
    return _build(name, image_dir, grouped, order)


def load_karpathy(json_path: str | Path, split: str = "test", image_dir: str | Path | None = None) -> CaptionDataset:
    """Load one split of a Karpathy ``dataset_*.json``.

    Image paths are ``image_dir / [filepath /] filename``; ``image_dir`` defaults to ``images/`` next to the
    JSON file. Images keep the JSON's order.
    """
    json_path = Path(json_path)
    if split not in KARPATHY_SPLITS:
        raise DatasetError(f"unknown Karpathy split {split!r}; use one of {', '.join(KARPATHY_SPLITS)}")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read {json_path} ({exc.strerror}); {CAPTIONS_LAYOUT}") from exc
    except ValueError as exc:
        raise DatasetError(f"{json_path} is not valid JSON ({exc}); expected a Karpathy dataset_*.json") from exc
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f"{json_path} has no 'images' list; expected a Karpathy dataset_*.json")
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent / "images"

    grouped: dict[str, list[str]] = {}
    splits_seen: set[str] = set()
    for position, entry in enumerate(entries):
        try:
            splits_seen.add(entry["split"])
            if entry["split"] != split:
                continue
            relative = str(Path(entry.get("filepath") or "") / entry["filename"])
            captions = [s["raw"].strip() for s in entry["sentences"] if s["raw"].strip()]
        except (KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(
                f"{json_path}: image entry {position} lacks {exc} (needs filename, split, sentences[].raw)"
            ) from exc
        if not captions:
            log.warning("%s: %s has no captions; skipped", json_path, relative)
            continue
        grouped.setdefault(relative, []).extend(captions)
    if not grouped:
        raise DatasetError(
            f"{json_path} has no images in split {split!r} (splits present: {', '.join(sorted(splits_seen)) or 'none'})"
        )
    order = list(grouped)
    _check_files(image_dir, order, json_path)
    stem = json_path.stem.removeprefix("dataset_")
    return _build(f"{stem}:{split}", image_dir, grouped, order)


def load_dataset(root: str | Path, split_file: str | Path | None = None,
                 karpathy_split: str | None = None) -> CaptionDataset:
    """Load a benchmark from ``root``, whichever layout it is in.

    * ``root`` is a ``.json`` file -> Karpathy, split ``karpathy_split`` (default ``test``), images in
      ``images/`` next to it.
    * ``root`` is a folder holding one ``dataset_*.json`` and ``karpathy_split`` is given -> Karpathy, images
      in ``root/images`` (or ``root`` itself when it has no ``images/``).
    * otherwise the captions.txt layout, restricted to ``split_file`` if given.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root} does not exist; {CAPTIONS_LAYOUT}")
    if root.is_file():
        if root.suffix != ".json":
            raise DatasetError(f"{root} is a file but not a .json; {CAPTIONS_LAYOUT}")
        if split_file is not None:
            raise DatasetError("split_file applies to the captions.txt layout; choose a Karpathy split instead")
        return load_karpathy(root, karpathy_split or "test")
    if karpathy_split is not None:
        if split_file is not None:
            raise DatasetError("give either split_file (captions.txt layout) or karpathy_split, not both")
        candidates = sorted(root.glob("dataset_*.json"))
        if len(candidates) != 1:
            found = ", ".join(c.name for c in candidates) or "none"
            raise DatasetError(
                f"karpathy_split={karpathy_split!r} needs exactly one dataset_*.json in {root} (found: {found}); "
                "or pass the JSON file itself"
            )
        image_dir = root / "images" if (root / "images").is_dir() else root
        return load_karpathy(candidates[0], karpathy_split, image_dir)
    return load_captions_csv(root, split_file)
