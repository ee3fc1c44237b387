"""JPEG draft decoding of 12-megapixel photos: how much faster than a full decode, and how close the
embeddings stay.

    python benchmarks/decode_draft.py [--photos DIR] [--n 20] [--json]

Makes 12 MP JPEGs (4000 x 3000, quality 92) by upscaling real photos (default: the Flickr8k full-size
originals) into a temporary folder, then for each: decodes it the way `xmodal index` does
(indexer.decode.read_image: libjpeg draft mode, never below the model's 224 px, then a shrink) and fully
(every pixel, then the same shrink), alternating which goes first; embeds both with the lite image tower.
Reports median decode times, the speed-up, and the cosine between the two embeddings of each photo, and
the same speed-up for libjpeg alone (Pillow decoding bytes already in memory, no reading or hashing) and for
the whole way from file to the model's 224 x 224 input (decode plus the encoder's resize); then
indexes the 12 MP photos end to end (`xmodal index`'s pipeline, patch tokens included; median of 3 runs
into fresh libraries, encoder warmed up) for images/s.

The speed-up is bounded by the entropy-coded size of the file: a draft decode still Huffman-decodes every
coefficient, and only the inverse DCT, upsampling and colour conversion shrink with the scale. So it also
reports, per JPEG quality (`--qualities`, default 75 85 92 95: libjpeg's default, and the range cameras
use), the same photos saved at that quality: bits per pixel, draft and full decode times (`read_image`),
and the speed-up.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
FULL = 1 << 20  # a target size no photo reaches: draft mode never reduces


def make_12mp(photos: Path, n: int, out: Path, quality: int = 92) -> list[Path]:
    sources = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
    if not sources:
        raise SystemExit(f"no JPEG photos in {photos}")
    made = []
    for src in sources:
        with Image.open(src) as im:
            big = im.convert("RGB").resize((4000, 3000) if im.width >= im.height else (3000, 4000), Image.BICUBIC)
        path = out / f"{src.stem}-12mp.jpg"
        big.save(path, quality=quality)
        made.append(path)
    return made


def run(paths: list[Path], index_runs: int = 3) -> dict:
    from xmodal.engine.eval.speed import index_rate
    from xmodal.indexer.ingest.decode import read_image
    from xmodal.indexer.models.encoders import get_encoder

    enc = get_encoder("lite")
    draft_s, full_s, cosines, sizes, libjpeg_draft, libjpeg_full = [], [], [], [], [], []
    input_draft, input_full = [], []
    for i, p in enumerate(paths):
        order = [("draft", 224), ("full", FULL)] if i % 2 == 0 else [("full", FULL), ("draft", 224)]
        images = {}
        for name, target in order:
            t0 = time.perf_counter()
            images[name] = read_image(str(p), target_size=target).image
            (draft_s if name == "draft" else full_s).append(time.perf_counter() - t0)
        full = images["full"]
        s = 448 / min(full.size)  # the same final shrink read_image gives the draft (shorter side 2 x 224)
        full = full.resize((round(full.width * s), round(full.height * s)), Image.BILINEAR)
        a, b = enc.encode_images([images["draft"], full])
        cosines.append(float(a @ b))
        for name, target in order:  # photo -> the model's 224 x 224 input, as the indexer's decode threads make it
            t0 = time.perf_counter()
            read_image(str(p), target_size=target, prepare=enc.preprocess.fit)
            (input_draft if name == "draft" else input_full).append(time.perf_counter() - t0)
        data = p.read_bytes()
        sizes.append(len(data))
        for name in [n for n, _ in order]:
            t0 = time.perf_counter()
            with Image.open(io.BytesIO(data)) as im:
                if name == "draft":
                    im.draft("RGB", (224, 224))
                im.load()
            (libjpeg_draft if name == "draft" else libjpeg_full).append(time.perf_counter() - t0)
    return {"photos": len(paths), "megapixels": 12.0, "draft_ms_p50": round(1000 * statistics.median(draft_s), 1),
            "full_ms_p50": round(1000 * statistics.median(full_s), 1),
            "speedup": round(statistics.median(full_s) / statistics.median(draft_s), 1),
            "cosine_min": round(min(cosines), 4), "cosine_median": round(statistics.median(cosines), 4),
            "file_mb_mean": round(statistics.mean(sizes) / 1e6, 2),
            "libjpeg_draft_ms_p50": round(1000 * statistics.median(libjpeg_draft), 1),
            "libjpeg_full_ms_p50": round(1000 * statistics.median(libjpeg_full), 1),
            "libjpeg_speedup": round(statistics.median(libjpeg_full) / statistics.median(libjpeg_draft), 1),
            "to_input_draft_ms_p50": round(1000 * statistics.median(input_draft), 1),
            "to_input_full_ms_p50": round(1000 * statistics.median(input_full), 1),
            "to_input_speedup": round(statistics.median(input_full) / statistics.median(input_draft), 1),
            "draft_size": list(images["draft"].size),
            "index_img_s": round(index_rate(enc, paths[0].parent, runs=index_runs)[0], 1)}


def by_quality(photos: Path, n: int, qualities: list[int], workdir: Path) -> list[dict]:
    """Draft against full decode (`read_image`, files on disk, alternating order) of the same `n` photos saved
    as 12 MP JPEGs at each quality."""
    from xmodal.indexer.ingest.decode import read_image

    rows = []
    for quality in qualities:
        folder = workdir / f"q{quality}"
        folder.mkdir()
        paths = make_12mp(photos, n, folder, quality)
        times: dict = {"draft": [], "full": []}
        for i, p in enumerate(paths):
            for name in (("draft", "full") if i % 2 == 0 else ("full", "draft")):
                t0 = time.perf_counter()
                read_image(str(p), target_size=224 if name == "draft" else FULL)
                times[name].append(time.perf_counter() - t0)
        size = statistics.mean(p.stat().st_size for p in paths)
        draft, full = statistics.median(times["draft"]), statistics.median(times["full"])
        rows.append({"quality": quality, "file_mb_mean": round(size / 1e6, 2),
                     "bits_per_pixel": round(8 * size / 12e6, 2), "draft_ms_p50": round(1000 * draft, 1),
                     "full_ms_p50": round(1000 * full, 1), "speedup": round(full / draft, 1)})
        for p in paths:
            p.unlink()
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=FLICKR8K / "originals")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--qualities", type=int, nargs="*", default=[75, 85, 92, 95])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(make_12mp(args.photos, args.n, Path(tmp)))
        for p in Path(tmp).glob("*.jpg"):
            p.unlink()
        result["by_quality"] = by_quality(args.photos, args.n, args.qualities, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['photos']} photos of 12 MP: draft decode {result['draft_ms_p50']} ms, full {result['full_ms_p50']} ms "
              f"(x{result['speedup']}; libjpeg alone x{result['libjpeg_speedup']}); embedding cosine min {result['cosine_min']}, median {result['cosine_median']}; "
              f"indexing end to end {result['index_img_s']} images/s")
        for row in result["by_quality"]:
            print(f"  quality {row['quality']}: {row['bits_per_pixel']} bits/pixel, draft {row['draft_ms_p50']} ms, "
                  f"full {row['full_ms_p50']} ms, x{row['speedup']}")
    return result


if __name__ == "__main__":
    main()
