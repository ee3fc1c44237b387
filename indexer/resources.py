"""Files shipped inside the package (`xmodal.data`): the lite model's weights and the sample photos.

Found through importlib.resources, so they resolve the same from a git checkout (an editable install maps
`xmodal.data` to the repository's data/ folder) and from an installed wheel (site-packages/xmodal/data/)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "xmodal.data"


def data_dir() -> Path:
    """The folder that holds the shipped data (a real folder: wheels are installed unzipped)."""
    return Path(str(resources.files(PACKAGE)))


def data_file(name: str) -> Path:
    """A shipped file by name, e.g. data_file("lite-align.pt"); the path may not exist (a trimmed install)."""
    return data_dir() / name


def samples_dir() -> Path:
    """The sample photos (and their captions.txt) that `make demo` and `xmodal bench speed` use."""
    return data_dir() / "samples"
