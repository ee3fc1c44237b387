"""Writing a training checkpoint: float16 weights plus the run's config, dev figures and history, in one
torch file replaced atomically (a crash never leaves a half-written checkpoint where a good one was)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def write_checkpoint(path: Path, fmt: str, state: dict[str, torch.Tensor], cfg, **fields) -> None:
    """Save {format, state (floats as float16), config (cfg without its history), history, **fields}."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save({
        "format": fmt,
        "state": {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        "config": {k: v for k, v in asdict(cfg).items() if k != "history"},
        "history": cfg.history,
        **fields,
    }, tmp)
    os.replace(tmp, path)
    logger.info("wrote %s", path)
