"""Tiny randomly initialised CLIP-family checkpoints, written as complete folders at test time (config,
weights, image processor, tokenizer made offline), so the real loading code runs without any network.

The tokenizers are built here: a byte-level BPE vocabulary with no merges (CLIP, SigLIP stand-in) and a
character WordPiece vocabulary (Chinese-CLIP)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

SIZE = 32  # image side of the tiny vision towers


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def byte_level_tokenizer(folder: Path):
    """A CLIPTokenizer whose vocabulary is the 256 byte symbols (+ end-of-word forms) and no merges."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


def _text(vocab: int, **extra) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, **extra)


def _save(folder: Path, model, tokenizer, image_processor) -> Path:
    """Write a complete checkpoint folder: weights + config, tokenizer, image processor config."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def _vision() -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
                patch_size=8)


def make_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tok = byte_level_tokenizer(folder / "_tok")
    cfg = CLIPConfig(text_config=_text(514, bos_token_id=512, eos_token_id=513, pad_token_id=513),
                     vision_config=_vision(), projection_dim=16)
    return _save(folder, CLIPModel(cfg), tok,
                 CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}))


def make_siglip(folder: Path) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(1)
    tok = byte_level_tokenizer(folder / "_tok")
    cfg = SiglipConfig(text_config=_text(514, projection_size=32), vision_config=_vision())
    return _save(folder, SiglipModel(cfg), tok, SiglipImageProcessor(size={"height": SIZE, "width": SIZE}))


def make_chinese_clip(folder: Path) -> Path:
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    torch.manual_seed(2)
    chars = list("的一是狗猫在雪地里跑红色汽车海滩上两个孩子") + list("abcdefghijklmnopqrstuvwxyz")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    cfg = ChineseCLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32),
                            vision_config=_vision(), projection_dim=16)
    return _save(folder, ChineseCLIPModel(cfg), tok,
                 ChineseCLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}))


def make_blip_itm(folder: Path) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    torch.manual_seed(3)
    words = "a dog cat man woman runs jumps in the snow lake red car".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"] + words
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    cfg = BlipConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=40, encoder_hidden_size=32),
                     vision_config=_vision(), projection_dim=16, image_text_hidden_size=16)
    return _save(folder, BlipForImageTextRetrieval(cfg), tok, BlipImageProcessor(size={"height": SIZE, "width": SIZE}))
