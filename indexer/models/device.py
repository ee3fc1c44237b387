"""Where a torch encoder runs: ``--device cpu`` (the default) or ``cuda`` / ``cuda:N``.

CLIP-family checkpoints and the lite model's torch path move to the GPU (`to_device`); decoding stays on CPU
threads beside it. The lite model's ONNX Runtime path is CPU only, so ``cuda`` runs the lite model on torch."""
from __future__ import annotations

import re

from xmodal.indexer.models.base import Encoder, ModelUnavailable

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
#: images per forward pass on a GPU: enough to keep it busy, small enough for a ViT-B on 8 GB of memory
GPU_BATCH_SIZE = 256


def check_device(device: str, here: bool = True) -> str:
    """`device` normalised ("cpu", "cuda", "cuda:1"), or ModelUnavailable saying why it cannot be used. With
    `here=False` (a Ray driver, whose workers have the GPUs) only the name is checked."""
    device = (device or "cpu").strip().lower()
    if not DEVICE_PATTERN.match(device):
        raise ModelUnavailable(f"--device {device!r} is not cpu, cuda or cuda:N")
    if device.startswith("cuda") and here:
        import torch

        if not torch.cuda.is_available():
            raise ModelUnavailable(f"--device {device}: torch {torch.__version__} sees no CUDA GPU here (a CPU "
                                   "build of torch, or no driver); install a CUDA build of torch, or use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelUnavailable(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    return device


def place(encoder: Encoder, device: str) -> Encoder:
    """Move `encoder` to `device` (checked with `check_device`) and return it. An encoder without a torch
    path (`to_device`) runs where it is: asked for a GPU it is refused, naming the model."""
    device = check_device(device)
    mover = getattr(encoder, "to_device", None)
    if mover is None:
        if device != "cpu":
            raise ModelUnavailable(f"model {encoder.name} cannot run on {device} (it has no torch path); use "
                                   "--device cpu")
        return encoder
    mover(device)
    return encoder


def batch_size_for(device: str, asked: int) -> int:
    """The batch size to run on `device`: what was asked on CPU, at least GPU_BATCH_SIZE on a GPU."""
    return max(asked, GPU_BATCH_SIZE) if device.startswith("cuda") else asked
