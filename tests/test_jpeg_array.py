"""xmodal.indexer.ingest.jpeg_array: the indexer's JPEG fast path gives exactly the pixels the Pillow path gives."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from xmodal.indexer.ingest import jpeg_array
from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.models.base import Preprocess, resize_bicubic

pytestmark = pytest.mark.skipif(jpeg_array.simplejpeg is None, reason="simplejpeg is not installed")


def photo(size=(120, 90), seed=0) -> Image.Image:
    """Smooth colour gradients with noise: JPEG-like content where every pixel differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], -1) + rng.integers(0, 40, (*x.shape, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def jpeg_file(tmp_path, im: Image.Image, orientation: int = 1, name="p.jpg", **params) -> str:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    path = tmp_path / name
    im.save(path, "JPEG", quality=90, exif=exif, **params)
    return str(path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_decode_is_bit_identical_to_pillow_for_every_exif_orientation(tmp_path, orientation):
    path = jpeg_file(tmp_path, photo(), orientation)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im.convert("RGB")))
    got = jpeg_array.decode_upright(open(path, "rb").read(), orientation)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("params", [{}, {"progressive": True}, {"subsampling": 0}])
def test_fast_decode_matches_pillow_for_progressive_and_unsubsampled_jpegs(tmp_path, params):
    path = jpeg_file(tmp_path, photo(seed=1), **params)
    with Image.open(path) as im:
        assert np.array_equal(jpeg_array.decode_upright(open(path, "rb").read(), 1), np.asarray(im.convert("RGB")))


def test_grey_jpegs_come_out_as_replicated_rgb_like_pillows_conversion(tmp_path):
    path = jpeg_file(tmp_path, photo().convert("L"))
    with Image.open(path) as im:
        assert im.mode == "L"
        assert jpeg_array.fast_path_applies(im, 64)
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(jpeg_array.decode_upright(open(path, "rb").read(), 1), expected)


def test_fast_path_is_only_taken_where_pillows_draft_mode_would_not_shrink(tmp_path):
    small = jpeg_file(tmp_path, photo((300, 200)), name="small.jpg")  # 300 // 224 = 1: full-scale decode
    large = jpeg_file(tmp_path, photo((500, 460)), name="large.jpg")  # both sides >= 448: draft shrinks it
    png = tmp_path / "p.png"
    photo().save(png)
    cmyk = tmp_path / "cmyk.jpg"
    photo().convert("CMYK").save(cmyk, "JPEG")
    with Image.open(small) as a, Image.open(large) as b, Image.open(png) as c, Image.open(cmyk) as d:
        assert jpeg_array.fast_path_applies(a, 224)
        assert not jpeg_array.fast_path_applies(b, 224)
        assert not jpeg_array.fast_path_applies(c, 224)
        assert not jpeg_array.fast_path_applies(d, 224)


@pytest.mark.parametrize("orientation", [1, 6])
def test_read_image_with_the_encoders_resize_gives_what_resizing_the_pillow_decode_gives(tmp_path, orientation):
    pre = Preprocess(size=64)
    path = jpeg_file(tmp_path, photo((150, 100)), orientation)
    fast = read_image(path, target_size=64, prepare=pre.fit)
    plain = read_image(path, target_size=64)
    assert (fast.width, fast.height, fast.sha256) == (plain.width, plain.height, plain.sha256)
    assert fast.image.size == (64, 64)
    assert np.array_equal(np.asarray(fast.image), np.asarray(pre.fit(plain.image)))


def test_a_corrupt_jpeg_on_the_fast_path_still_gets_pillows_clear_reason(tmp_path):
    path = jpeg_file(tmp_path, photo((150, 100)))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        read_image(path, target_size=64, prepare=Preprocess(size=64).fit)


@pytest.mark.parametrize("size", [(300, 170), (40, 30), (500, 20)])  # down, up, both at once
def test_torch_resize_agrees_with_pillows_bicubic_filter(size):
    im = photo(size)
    ours = np.asarray(resize_bicubic(im, 64)).astype(int)
    pillow = np.asarray(im.resize((64, 64), Image.BICUBIC)).astype(int)
    assert np.abs(ours - pillow).mean() < 0.25
    assert np.abs(ours - pillow).max() <= 8
    assert np.array_equal(np.asarray(resize_bicubic(np.asarray(im), 64)), ours)
