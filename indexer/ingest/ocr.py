"""Reading the text in a photo (OCR), offline, behind one small interface: `TextReader.read(image)` ->
`TextBox`es. The reader here is RapidOCR on ONNX Runtime (`pip install 'xmodal[ocr]'`): the PP-OCRv4
detection and recognition models (Chinese and English) ship inside its wheel; nothing is downloaded.

Cost follows the text: a quick detection pass on a small copy of the photo (long side `PRECHECK_SIDE`)
says whether there is text at all; only then does the full pass run (detection at the reading size, then
recognition of each text box found). A photo without text costs one small detection pass.

The quick pass's side was 480 px until it was measured to miss text the full pass reads (`benchmarks/ocr.py`:
289 of 300 printed-word photos kept against 297 at 640 px; 13 of 18 Flickr8k originals with text against all
18; 640 px costs 14% more per photo). Readers of one `family` share their recognition models: the text one
found stands for the others, and a photo one found no text in is read again by another (so libraries read
with the 480 px quick pass catch up on what it missed, without reading again what it found)."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

READ_SIDE = 1280  # the photo's long side for the full pass (larger photos are reduced to it)
PRECHECK_SIDE = 640  # the long side of the quick detection pass (see the module doc)
MIN_CONFIDENCE = 0.5  # recognised text below this is dropped


class OcrUnavailable(RuntimeError):
    """No OCR engine is installed."""


@dataclass(frozen=True)
class TextBox:
    """One line of text read in a photo: its box in the photo's pixels (x0, y0, x1, y1), text and confidence."""

    box: tuple[int, int, int, int]
    text: str
    confidence: float

    def to_json(self) -> list:
        return [*self.box, round(float(self.confidence), 4), self.text]


class TextReader(Protocol):
    name: str  # identifies the reader: photos read by another one are read again...
    family: str  # ...except those another reader of this family found text in (same recognition models)

    def read(self, image: Image.Image) -> list[TextBox]: ...


def _reduced(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return image, scale


class RapidReader:
    """RapidOCR (PP-OCRv4 det + rec, ONNX Runtime, single-threaded sessions unless told otherwise)."""

    def __init__(self, precheck: bool = True, threads: int = 1) -> None:
        try:
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise OcrUnavailable("OCR needs RapidOCR: pip install 'xmodal[ocr]' (rapidocr-onnxruntime; its "
                                 "models come inside the wheel, nothing is downloaded)") from e
        version = getattr(rapidocr_onnxruntime, "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version

            version = dist_version("rapidocr-onnxruntime")
        self.family = f"rapidocr-{version}"  # "rapidocr-1.4.4" alone: read with the 480 px quick pass
        self.name = f"{self.family}/" + (f"quick{PRECHECK_SIDE}" if precheck else "full")
        self.precheck = precheck
        self._engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)
        # the quick pass shares the detection session; "max" reads the small copy at its own size
        self._precheck = copy.copy(self._engine.text_det)
        self._precheck.limit_type = "max"

    def has_text(self, image: Image.Image) -> bool:
        """The quick pass: does detection find any text box on a small copy of the photo?"""
        small, _ = _reduced(image, PRECHECK_SIDE)
        boxes, _ = self._precheck(_bgr(small))
        return boxes is not None and len(boxes) > 0

    def read(self, image: Image.Image) -> list[TextBox]:
        image = image.convert("RGB")
        if self.precheck and not self.has_text(image):
            return []
        big, scale = _reduced(image, READ_SIDE)
        result, _ = self._engine(_bgr(big), use_det=True, use_cls=False, use_rec=True)
        out = []
        for points, text, confidence in result or []:
            text = str(text).strip()
            if not text or float(confidence) < MIN_CONFIDENCE:
                continue
            xs = [p[0] / scale for p in points]
            ys = [p[1] / scale for p in points]
            out.append(TextBox((int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))), text, float(confidence)))
        return out


def _bgr(image: Image.Image) -> np.ndarray:
    """RapidOCR reads arrays as OpenCV does: BGR, uint8, contiguous."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def get_reader(precheck: bool = True) -> TextReader:
    """The OCR reader to index with (OcrUnavailable when none is installed)."""
    return RapidReader(precheck=precheck)


def joined_text(boxes: list[TextBox]) -> str:
    """The text of a photo's boxes, top to bottom then left to right, one space apart."""
    return " ".join(b.text for b in sorted(boxes, key=lambda b: (b.box[1] // 16, b.box[0])))
