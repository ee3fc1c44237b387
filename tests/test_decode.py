"""xmodal.indexer.ingest.decode: every photo becomes a small upright RGB image, every bad file a clear reason."""
from __future__ import annotations

import hashlib
import os
import random
import struct
import time
import warnings
import zlib
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from xmodal.indexer.ingest import decode
from xmodal.indexer.ingest.decode import DEFAULT_MAX_PIXELS, DecodeError, iter_decoded, read_image
from xmodal.indexer.records import DecodedImage, Skipped
from xmodal.indexer.ingest.walk import iter_image_files

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- fixtures drawn at test time ------------------------------------------------------------------


def save(im: Image.Image, path, **params) -> str:
    im.save(path, **params)
    return str(path)


def jpeg(path, size=(64, 48), color=RED, **params) -> str:
    return save(Image.new("RGB", size, color), path, quality=95, **params)


def noise(size=(256, 256), seed=0) -> Image.Image:
    """Incompressible pixels, so that cutting the file in half really loses image data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def truncate(path, fraction=0.5) -> str:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return str(path)


def png_declaring(path, width: int, height: int) -> str:
    """A few hundred bytes of PNG whose header claims width x height RGB pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def close_to(pixel, expected, tol=12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def reason_for(path, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        read_image(str(path), **kwargs)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value.reason


# --- the record -------------------------------------------------------------------------------------


def test_record_describes_the_exact_bytes_read(tmp_path):
    path = jpeg(tmp_path / "a.jpg")
    data = open(path, "rb").read()

    rec = read_image(path)

    assert isinstance(rec, DecodedImage) and rec.path == path
    assert rec.size == len(data) == os.stat(path).st_size
    assert rec.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.mtime == os.stat(path).st_mtime
    assert (rec.width, rec.height) == (64, 48) and rec.taken_at is None
    assert rec.image.mode == "RGB" and close_to(rec.image.getpixel((10, 10)), RED)


def test_heic_photo_decodes_through_pillow_heif(tmp_path):
    pytest.importorskip("pillow_heif")
    path = tmp_path / "phone.HEIC"
    src = Image.new("RGB", (64, 48), BLUE)
    try:
        from pillow_heif import register_heif_opener
        register_heif_opener()
        src.save(path)
    except (KeyError, OSError, ValueError) as exc:
        pytest.skip(f"no HEIF encoder available to make the fixture: {exc}")

    rec = read_image(str(path))

    assert (rec.width, rec.height) == (64, 48) and close_to(rec.image.getpixel((32, 24)), BLUE, tol=20)


# --- size: draft mode and shrinking -----------------------------------------------------------------


def test_large_jpeg_is_decoded_in_draft_mode_but_reports_its_full_size(tmp_path):
    path = jpeg(tmp_path / "12mp.jpg", size=(4000, 3000), color=GREEN)

    rec = read_image(path, target_size=224)

    assert (rec.width, rec.height) == (4000, 3000)
    assert 224 <= min(rec.image.size) <= 448
    assert rec.image.size == (500, 375)  # libjpeg's 1/8 scale: no full-size decode happened


def test_draft_never_brings_the_short_side_of_a_panorama_below_target(tmp_path):
    path = jpeg(tmp_path / "pano.jpg", size=(4000, 600))

    rec = read_image(path, target_size=224)

    assert (rec.width, rec.height) == (4000, 600)
    assert 224 <= min(rec.image.size) <= 448


def test_large_png_is_shrunk_to_twice_the_target_keeping_aspect(tmp_path):
    path = save(Image.new("RGB", (1200, 900), BLUE), tmp_path / "big.png")

    rec = read_image(path, target_size=224)

    assert rec.image.size == (597, 448)
    assert (rec.width, rec.height) == (1200, 900)


def test_small_image_is_not_upscaled(tmp_path):
    path = save(Image.new("RGB", (100, 50), RED), tmp_path / "small.png")

    assert read_image(path).image.size == (100, 50)


# --- orientation, frames, capture time -----------------------------------------------------------------


def test_exif_orientation_6_rotates_and_swaps_width_and_height(tmp_path):
    im = Image.new("RGB", (80, 40), RED)
    im.paste(BLUE, (40, 0, 80, 40))  # left half red, right half blue, as stored by the sensor
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(im, tmp_path / "portrait.jpg", exif=exif, quality=95)

    rec = read_image(path)

    assert (rec.width, rec.height) == (40, 80)
    assert rec.image.size == (40, 80)
    assert close_to(rec.image.getpixel((20, 5)), RED)   # the left edge is now the top
    assert close_to(rec.image.getpixel((20, 75)), BLUE)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, GREEN, BLUE)]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)

    rec = read_image(path)

    assert rec.image.getpixel((16, 16)) == RED


def test_exif_date_time_original_is_preferred_over_date_time(tmp_path):
    exif = Image.Exif()
    exif[306] = "2000:01:01 00:00:00"  # DateTime: when the file was last edited
    exif.get_ifd(0x8769)[36867] = "2021:07:04 18:30:05"  # DateTimeOriginal: when the photo was taken
    path = jpeg(tmp_path / "dated.jpg", exif=exif)

    assert read_image(path).taken_at == datetime(2021, 7, 4, 18, 30, 5)


def test_exif_date_time_is_used_when_there_is_no_original(tmp_path):
    exif = Image.Exif()
    exif[306] = "2019:12:31 23:59:58"
    path = jpeg(tmp_path / "dated.jpg", exif=exif)

    assert read_image(path).taken_at == datetime(2019, 12, 31, 23, 59, 58)


def test_malformed_exif_date_gives_none_not_an_error(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "0000:00:00 00:00:00"
    path = jpeg(tmp_path / "zero-date.jpg", exif=exif)

    assert read_image(path).taken_at is None


# --- colour modes ---------------------------------------------------------------------------------


def test_16_bit_png_gradient_keeps_its_brightness(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(8, axis=0)
    path = save(Image.fromarray(ramp), tmp_path / "ramp16.png")
    assert Image.open(path).mode.startswith("I;16")  # the fixture really is 16-bit

    got = np.asarray(read_image(path).image)[..., 0][0]

    expected = np.rint(ramp[0] / 257.0)
    assert np.abs(got.astype(int) - expected).max() <= 1  # scaled 0..65535 -> 0..255, not clipped at 255
    assert got[0] == 0 and got[-1] == 255 and 126 <= got[128] <= 129


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("I;16", 32896, 128),
        ("I;16B", 65535, 255),
        ("I", 32896, 128),
        ("F", 0.5, 128),
        ("L", 77, 77),
        ("1", 1, 255),
    ],
)
def test_grey_modes_become_rgb_with_the_right_level(tmp_path, mode, value, expected):
    path = save(Image.new(mode, (16, 16), value), tmp_path / f"grey-{mode.replace(';', '_')}.tif")

    pixel = read_image(path).image.getpixel((8, 8))

    assert close_to(pixel, (expected,) * 3, tol=1)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "print.jpg", quality=95)

    rec = read_image(path)

    assert rec.image.mode == "RGB" and close_to(rec.image.getpixel((16, 16)), RED, tol=20)


def test_palette_png_with_transparency_has_white_where_transparent(tmp_path):
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # 0: black (transparent), 1: red
    im.paste(1, (16, 0, 32, 32))
    path = save(im, tmp_path / "sticker.png", transparency=0)

    out = read_image(path).image

    assert out.getpixel((4, 16)) == WHITE  # not black: transparency is honoured
    assert out.getpixel((28, 16)) == RED


def test_palette_png_without_transparency_keeps_its_colours(tmp_path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    path = save(im, tmp_path / "flat.png")

    assert read_image(path).image.getpixel((4, 4)) == BLUE


def test_rgba_is_composited_onto_white(tmp_path):
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    im.paste((255, 0, 0, 128), (16, 0, 32, 32))   # half-transparent red
    path = save(im, tmp_path / "logo.png")

    out = read_image(path).image

    assert out.getpixel((4, 16)) == WHITE
    assert close_to(out.getpixel((28, 16)), (255, 127, 127), tol=2)


def test_grey_with_alpha_is_composited_onto_white(tmp_path):
    path = save(Image.new("LA", (8, 8), (0, 0)), tmp_path / "la.png")

    assert read_image(path).image.getpixel((4, 4)) == WHITE


# --- files that cannot be used --------------------------------------------------------------------


def test_zero_byte_file_is_an_empty_file_error(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()

    assert reason_for(path).startswith("empty file (0 bytes)")


def test_truncated_jpeg_is_a_corrupt_data_error(tmp_path):
    path = truncate(save(noise(), tmp_path / "cut.jpg", quality=90))

    assert "truncated" in reason_for(path)


def test_truncated_png_is_a_corrupt_data_error(tmp_path):
    path = truncate(save(noise(), tmp_path / "cut.png"))

    assert "truncated" in reason_for(path)


def test_html_saved_as_jpg_is_recognised_as_html(tmp_path):
    path = tmp_path / "download.jpg"
    path.write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")

    reason = reason_for(path)

    assert "not a recognised image format" in reason and "HTML" in reason


def test_random_bytes_are_not_an_image(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(random.Random(0).randbytes(2048))

    assert "not a recognised image format" in reason_for(path)


def test_decompression_bomb_is_rejected_from_the_header(tmp_path):
    path = png_declaring(tmp_path / "bomb.png", 40000, 40000)  # 1.6 G pixels in ~100 bytes
    assert os.path.getsize(path) < 200

    reason = reason_for(path)

    # Refused before decoding: the junk pixel data would otherwise give a "corrupt" reason.
    assert "decompression bomb" in reason and "1,600,000,000" in reason


def test_image_above_max_pixels_is_rejected_naming_its_size_and_the_limit(tmp_path):
    path = png_declaring(tmp_path / "huge.png", 5000, 4000)

    reason = reason_for(path, max_pixels=10_000_000)

    assert "5000x4000" in reason and "10,000,000" in reason and "decompression bomb" in reason


def test_pillow_bomb_warning_turned_into_an_error_still_becomes_a_decode_error(tmp_path):
    path = png_declaring(tmp_path / "big.png", 10000, 10000)  # above Pillow's warning level, below our limit
    assert 10000 * 10000 < DEFAULT_MAX_PIXELS

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "decompression bomb" in reason_for(path)


def test_folder_is_not_a_file(tmp_path):
    folder = tmp_path / "album.jpg"
    folder.mkdir()

    assert "folder" in reason_for(folder)


def test_missing_file_says_it_was_not_found(tmp_path):
    assert "not found" in reason_for(tmp_path / "gone.jpg")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading")
def test_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "locked.jpg"
    jpeg(path)
    path.chmod(0)
    try:
        assert "permission denied" in reason_for(path)
    finally:
        path.chmod(0o644)


# --- from the walk, through the pool ---------------------------------------------------------------------


def test_non_utf8_file_name_is_walked_and_decoded(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    Image.new("RGB", (16, 16), GREEN).save(os.fsdecode(raw), format="JPEG")

    (path,) = iter_image_files(tmp_path)
    (rec,) = iter_decoded([path])

    assert isinstance(rec, DecodedImage) and os.fsencode(rec.path) == raw


def test_file_deleted_between_walk_and_read_becomes_skipped(tmp_path):
    jpeg(tmp_path / "a.jpg")
    jpeg(tmp_path / "b.jpg")
    paths = list(iter_image_files(tmp_path))
    os.remove(tmp_path / "a.jpg")

    first, second = iter_decoded(paths)

    assert isinstance(first, Skipped) and first.path == paths[0] and "not found" in first.reason
    assert isinstance(second, DecodedImage)


def test_iter_decoded_keeps_input_order_and_turns_errors_into_skipped(tmp_path):
    items: list = []
    for i in range(12):
        items.append(save(Image.new("RGB", (20 + 37 * i, 30), (i * 20, 0, 0)), tmp_path / f"{i:02}.png"))
    walk_skip = Skipped(str(tmp_path / "dangling.jpg"), "broken symbolic link")
    html = tmp_path / "page.jpg"
    html.write_text("<html></html>")
    items[3:3] = [walk_skip, str(html)]

    out = list(iter_decoded(items, workers=2, prefetch=4))

    assert [o.path for o in out] == [i if isinstance(i, str) else i.path for i in items]
    assert out[3] is walk_skip  # passed through untouched
    assert isinstance(out[4], Skipped) and "HTML" in out[4].reason
    decoded = [o for o in out if isinstance(o, DecodedImage)]
    assert [d.width for d in decoded] == [20 + 37 * i for i in range(12)]


def test_iter_decoded_yields_in_input_order_even_when_later_files_finish_first(tmp_path, monkeypatch):
    paths = [str(tmp_path / f"{i}.jpg") for i in range(6)]

    def slow_first(path, **kwargs):
        time.sleep(0.2 if path == paths[0] else 0.0)
        return Skipped(path, "fake decode")

    monkeypatch.setattr(decode, "read_image", slow_first)

    assert [o.path for o in iter_decoded(paths, workers=3, prefetch=6)] == paths


def test_iter_decoded_turns_an_unexpected_exception_into_skipped(tmp_path, monkeypatch):
    good = jpeg(tmp_path / "good.jpg")
    odd = jpeg(tmp_path / "odd.jpg")
    real_read_image = decode.read_image

    def flaky(path, **kwargs):
        if path == odd:
            raise RuntimeError("codec exploded")
        return real_read_image(path, **kwargs)

    monkeypatch.setattr(decode, "read_image", flaky)

    first, second, third = iter_decoded([good, odd, good])

    assert isinstance(first, DecodedImage) and isinstance(third, DecodedImage)
    assert isinstance(second, Skipped) and second.path == odd
    assert "RuntimeError" in second.reason and "codec exploded" in second.reason


def test_iter_decoded_consumes_its_input_lazily_with_bounded_prefetch(tmp_path):
    path = jpeg(tmp_path / "a.jpg")
    pulled = 0

    def source():
        nonlocal pulled
        for _ in range(50):
            pulled += 1
            yield path

    stream = iter_decoded(source(), workers=2, prefetch=3)
    next(stream)

    assert pulled <= 3  # never more than `prefetch` decodes ahead of the consumer
    assert sum(1 for _ in stream) == 49
    stream.close()


def test_decode_threads_run_torch_on_one_thread_and_leave_the_callers_setting_alone(tmp_path):
    import torch

    for i in range(4):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    before = torch.get_num_threads()
    seen = []

    def prepare(im):
        seen.append(torch.get_num_threads())
        return im

    assert len(list(iter_decoded(sorted(map(str, tmp_path.iterdir())), prepare=prepare))) == 4
    assert seen == [1, 1, 1, 1]
    assert torch.get_num_threads() == before
