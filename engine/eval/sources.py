"""Where the speed benchmarks' real data comes from: the photo embeddings a simulated collection is fitted
to, and the text queries that measure it.

* With the Flickr8k data (images/, captions.txt, splits/): the encoder's embeddings of the train + dev photos
  (7,000; or dev alone) and of dev captions (cached under ~/.cache/xmodal/bench: ~25 s per 1,000 photos).
* Without it: the embeddings of the photos given (by default the shipped samples), and a built-in list of
  caption-like queries.
Either way the queries are split in two: the first part tunes the index, the rest measure it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmodal.indexer.models.base import Encoder
from xmodal.indexer.storage.index_tuning import TUNING_QUERIES

logger = logging.getLogger(__name__)

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xmodal" / "bench"

#: Measured queries without the Flickr8k data: caption-like, none of them in TUNING_QUERIES.
BUILTIN_QUERIES = [
    "a dog running on the grass", "two children playing in the water", "a man riding a bike",
    "a group of people standing in the snow", "a black and white dog", "a woman in a red shirt",
    "a boy jumping into a swimming pool", "people walking down a city street", "a brown dog catching a ball",
    "a girl in a pink dress sitting on a bench", "a surfer riding a wave", "a climber on a rock face",
    "two dogs fighting over a stick", "a man in a hat playing the guitar", "a crowd watching a concert",
    "a child sliding down a slide", "a skateboarder doing a trick on a ramp", "a cyclist racing on a track",
    "a horse running in a field", "a cat sitting on a windowsill", "a family having a picnic in the park",
    "a man fishing from a boat", "snow covered mountains under a blue sky", "a woman reading a book on a train",
    "children running on the beach", "a dog swimming in a lake", "a football player kicking the ball",
    "a motorcycle on a dirt road", "an old man sitting on a bench", "a street market with many people",
    "a baby in a high chair", "a bride and groom dancing", "a kite flying over the sand",
    "a basketball player jumping", "a man skiing down a slope", "a little girl blowing bubbles",
    "a dog with a frisbee in its mouth", "people sitting at a cafe table", "a red car parked by the road",
    "a boy on his father's shoulders",
]


@dataclass
class Base:
    """Real data for one benchmark run."""

    images: np.ndarray  # (m, d) photo embeddings the simulated collection is fitted to
    tune_texts: np.ndarray  # (q1, d) text queries that tune the index
    test_texts: np.ndarray  # (q2, d) text queries that measure it
    captions: list[str] = field(default_factory=list)  # the measured queries' text
    source: str = ""  # where the photos and the queries came from, in words


def default_data_dir() -> Path | None:
    """The Flickr8k folder, or None: $XMODAL_FLICKR8K if set (empty: none), else shared/data/flickr8k beside
    a source checkout (the folder that holds the repository), where it exists."""
    env = os.environ.get("XMODAL_FLICKR8K")
    if env is not None:
        return Path(env) if env and (Path(env) / "captions.txt").exists() else None
    from xmodal.indexer.resources import data_dir

    guess = data_dir().resolve().parent.parent / "shared" / "data" / "flickr8k"
    return guess if (guess / "captions.txt").exists() else None


def _split(encoder: Encoder, captions: list[str], texts: np.ndarray | None = None, tune: list[str] | None = None):
    """(tune vectors, test vectors, test captions): `tune` captions tune, else the first quarter of `captions`."""
    texts = encoder.encode_texts(captions) if texts is None else texts
    if tune is not None:
        return encoder.encode_texts(tune).astype(np.float32), texts.astype(np.float32), captions
    q = len(captions) // 4
    return texts[:q].astype(np.float32), texts[q:].astype(np.float32), captions[q:]


def flickr8k_base(encoder: Encoder, data: Path, n_queries: int = 200, splits=("train", "dev")) -> Base:
    """Embeddings of the photos of `splits` and of `n_queries` dev captions (every fifth from the third;
    cached per encoder)."""
    from xmodal.engine.eval.datasets import load_captions_csv

    ds = load_captions_csv(data, data / "splits" / "dev.txt")
    images = [im for sp in splits for im in load_captions_csv(data, data / "splits" / f"{sp}.txt").images]
    key = hashlib.sha256(json.dumps([sorted(images), n_queries, 1, encoder.name]).encode()).hexdigest()[:12]
    f = CACHE / f"real-{key}.npz"
    if not f.exists():
        from xmodal.indexer.ingest.decode import read_image

        logger.info("embedding %d photos of %s (cached in %s)", len(images), data, f)
        vecs = [encoder.encode_images([read_image(str(ds.image_dir / n)).image for n in images[s:s + 32]])
                for s in range(0, len(images), 32)]
        captions = list(ds.captions[2::5][:n_queries])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(f, images=np.concatenate(vecs), texts=encoder.encode_texts(captions), captions=np.array(captions))
    z = np.load(f)
    tune, test, captions = _split(encoder, [str(c) for c in z["captions"]], z["texts"])
    return Base(z["images"].astype(np.float32), tune, test, captions,
                f"{len(images):,} Flickr8k {' + '.join(splits)} photos and {len(z['captions'])} dev captions "
                f"(a quarter tune, the rest measure), {data}")


def embed_photos(encoder: Encoder, photos: Path) -> np.ndarray:
    """Embeddings of every readable photo under `photos`."""
    from xmodal.indexer.ingest.decode import DecodeError, read_image
    from xmodal.indexer.ingest.walk import iter_image_files

    images = []
    for p in iter_image_files(photos):
        if isinstance(p, str):
            try:
                images.append(read_image(p).image)
            except DecodeError as e:
                logger.warning("skipped %s: %s", p, e)
    if not images:
        raise ValueError(f"no readable photos under {photos}")
    return np.concatenate([encoder.encode_images(images[s:s + 32]) for s in range(0, len(images), 32)])


def photos_base(encoder: Encoder, photos: Path, vectors: np.ndarray | None = None) -> Base:
    """The embeddings of the photos under `photos` (or `vectors`, already computed from them); queries from
    the built-in lists (TUNING_QUERIES tune, BUILTIN_QUERIES measure)."""
    vectors = embed_photos(encoder, photos) if vectors is None else vectors
    tune, test, captions = _split(encoder, list(BUILTIN_QUERIES), tune=list(TUNING_QUERIES))
    return Base(np.asarray(vectors, np.float32), tune, test, captions,
                f"{len(vectors)} photos under {photos} (no Flickr8k data found) and {len(BUILTIN_QUERIES)} built-in "
                f"queries, tuned on {len(TUNING_QUERIES)} others")


def base_embeddings(encoder: Encoder, data: Path | None, photos: Path, n_queries: int = 200,
                    splits=("train", "dev"), photo_vectors: np.ndarray | None = None) -> Base:
    """Flickr8k's photos and captions when `data` is given, else the photos under `photos`."""
    if data is not None:
        return flickr8k_base(encoder, Path(data), n_queries, splits)
    return photos_base(encoder, photos, photo_vectors)
