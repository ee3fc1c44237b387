"""What a worker does with one shard, without Ray: decode its files, embed them, project their patch
tokens. The actors of Ray Data's pool (indexer.distributed.ray_runner) call this; tests call it in-process."""
from __future__ import annotations

import importlib
import logging
import os
from contextlib import closing
from typing import Sequence

import numpy as np

from xmodal.indexer.distributed.shards import ShardResult
from xmodal.indexer.ingest.decode import iter_decoded
from xmodal.indexer.ingest.pipeline import BATCH_SIZE, batched
from xmodal.indexer.models.base import Encoder, decode_size, input_fit
from xmodal.indexer.records import DecodedImage, Skipped
from xmodal.indexer.storage.revision import encoder_revision

logger = logging.getLogger(__name__)

#: comma-separated modules a worker imports before it looks its encoder up (plugins that call
#: `register_encoder`); the driver passes its own value on to every worker
PLUGINS_ENV = "XMODAL_PLUGINS"


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the modules named in `spec` (default: $XMODAL_PLUGINS), so their encoders are registered."""
    names = [n.strip() for n in (spec if spec is not None else os.environ.get(PLUGINS_ENV, "")).split(",")
             if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def embed_shard(name: str, paths: Sequence[str], encoder: Encoder, projector=None, batch_size: int = BATCH_SIZE,
                decode_workers: int = 1) -> ShardResult:
    """Decode and embed `paths` (one shard) -> the shard's records, vectors, projected patch tokens and skips.
    A file that cannot be read or decoded is a skip with its reason, as in the local pipeline."""
    images: list[DecodedImage] = []
    skipped: list[Skipped] = []
    vectors: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    with_patches = projector is not None and hasattr(encoder, "encode_images_with_patches")
    decoded = iter_decoded(list(paths), target_size=decode_size(encoder), workers=decode_workers,
                           prepare=input_fit(encoder))
    with closing(decoded):
        for batch in batched(decoded, batch_size):
            good = [im for im in batch if not isinstance(im, Skipped)]
            skipped.extend(im for im in batch if isinstance(im, Skipped))
            if not good:
                continue
            pixels = [im.image for im in good]
            if with_patches:
                v, raw = encoder.encode_images_with_patches(pixels)
                tokens.append(projector(raw))
            else:
                v = encoder.encode_images(pixels)
            vectors.append(np.asarray(v, np.float32))
            for im in good:
                im.image = None  # pixels stay on the worker
            images.extend(good)
    dim = int(encoder.dim)
    return ShardResult(name=name, images=images,
                       vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
                       tokens=np.concatenate(tokens) if tokens else None, skipped=skipped,
                       model=encoder.name, revision=encoder_revision(encoder))
