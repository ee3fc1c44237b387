"""Files shipped as package data: the lite model's weights and the sample photos (`xmodal.data`), and the
base model's trained files, which ship in a companion distribution, `xmodal-base` (import name
`xmodal_base`, built from packaging/xmodal-base/ with `make base-wheel`), to keep them out of the main wheel.

Found through importlib.resources, so they resolve the same from a git checkout (an editable install maps
`xmodal.data` to the repository's data/ folder) and from an installed wheel (site-packages/xmodal/data/)."""
from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

PACKAGE = "xmodal.data"
COMPANION = "xmodal_base"  # the xmodal-base distribution: base-align.pt, base-rerank.pt
# what to do when base's files are missing (the wheel's file name spells the distribution xmodal_base)
COMPANION_HINT = ("`make install-base` in a checkout, or `pip install xmodal_base-*.whl` (the companion wheel, built "
                  "into dist/ by `make base-wheel`)")


def data_dir() -> Path:
    """The folder that holds the shipped data (a real folder: wheels are installed unzipped)."""
    return Path(str(resources.files(PACKAGE)))


def companion_dir() -> Path | None:
    """The installed companion package's folder, or None when xmodal-base is not installed. Finding it
    imports only xmodal_base's empty __init__."""
    if importlib.util.find_spec(COMPANION) is None:
        return None
    return Path(str(resources.files(COMPANION)))


def data_file(name: str) -> Path:
    """A shipped file by name, e.g. data_file("lite-align.pt"): from xmodal.data when it is there, else from
    the companion package xmodal_base when that is installed and has it, else the xmodal.data path, which
    does not exist (a trimmed install, or base's files not installed; callers say what to do)."""
    path = data_dir() / name
    if path.exists():
        return path
    companion = companion_dir()
    if companion is not None and (companion / name).exists():
        return companion / name
    return path


def samples_dir() -> Path:
    """The sample photos (and their captions.txt) that `make demo` and `xmodal bench speed` use."""
    return data_dir() / "samples"
