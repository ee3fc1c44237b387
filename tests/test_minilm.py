"""The text model in plain torch (indexer.models.bert) and its tokenizer (indexer.tokenizer) give exactly what
`transformers` gives for all-MiniLM-L6-v2, and loading them never imports `transformers`."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from xmodal.indexer.models.lite_encoder import load_minilm, minilm_path, tokenize
from xmodal.indexer.models.bert import Bert, BertConfig
from xmodal.indexer.models.tokenizer import Tokenizer, TokenizerError

transformers = pytest.importorskip("transformers")

TRICKY = [
    "A dog jumps into a lake.",
    "",
    "   leading and trailing spaces   ",
    "Crème brûlée at the café, naïve façade",  # accents are stripped by the uncased model
    "東京の夜景 and a 🐕 emoji",  # CJK characters split one by one; unknown symbols become [UNK]
    "UPPER case, MiXeD, don't stop!!! (really?) #hashtag @user 3.14",
    "word " * 100,  # longer than max_length: truncated, [SEP] kept
    "tab\tnew\nline\u00a0nbsp\u200bzero-width",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.mark.parametrize("max_length", [8, 64])
def test_token_ids_and_masks_equal_transformers_autotokenizer(minilm, max_length):
    tokenizer, _ = minilm
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    ids, mask = tokenize(tokenizer, TRICKY, max_length=max_length)
    want = reference(TRICKY, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    assert ids.shape[1] <= max_length and (ids[:, 0] == 101).all()
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist()) == reference.convert_ids_to_tokens(ids[0].tolist())


def test_a_batch_pads_to_its_longest_text_only(minilm):
    tokenizer, _ = minilm
    ids, mask = tokenizer(["a dog", "a dog runs in the snow"], max_length=64)
    assert ids.shape == (2, 8) and mask.sum(1).tolist() == [4, 8]
    assert ids[0, 4:].tolist() == [tokenizer.pad_id] * 4


def test_token_states_equal_transformers_bertmodel_on_the_real_checkpoint(minilm):
    tokenizer, ours = minilm
    reference = transformers.BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False,
                                                       local_files_only=True).eval()
    ids, mask = tokenize(tokenizer, TRICKY)
    with torch.no_grad():
        got = ours(ids, mask)
        want = reference(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    assert got.shape == (len(TRICKY), ids.shape[1], 384)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)


def test_a_different_random_bert_matches_transformers_too(tmp_path):
    """Not tuned to one checkpoint: other sizes, more heads, token types, randomly initialised."""
    config = transformers.BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                     intermediate_size=80, max_position_embeddings=40, type_vocab_size=3)
    torch.manual_seed(0)
    reference = transformers.BertModel(config, add_pooling_layer=False).eval()
    ours = Bert(BertConfig.from_dict(config.to_dict())).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    ids = torch.randint(1, 97, (4, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 2:] = 0
    types = torch.randint(0, 3, ids.shape)
    with torch.no_grad():
        got = ours(ids, mask, types)
        want = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-4)
    full = torch.ones_like(ids)  # no padding anywhere: the unmasked attention path
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, full, types), reference(input_ids=ids, attention_mask=full,
                                   token_type_ids=types).last_hidden_state, atol=1e-5, rtol=1e-4)


def test_unsupported_bert_variants_are_named():
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        BertConfig.from_dict({"hidden_act": "relu"})
    with pytest.raises(ValueError, match="not a multiple of 5 heads"):
        BertConfig.from_dict({"hidden_size": 384, "num_attention_heads": 5})


def test_tokenizer_names_a_bad_file_and_a_bad_text(tmp_path, minilm):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a readable tokenizer.json"):
        Tokenizer(bad)
    tokenizer, _ = minilm
    with pytest.raises(TypeError, match="item 1 is int"):
        tokenizer(["a dog", 7])
    ids, mask = tokenizer([])
    assert ids.shape == mask.shape == (0, 0)


def test_a_text_search_process_never_imports_transformers():
    code = ("import sys\nfrom xmodal.indexer.models.encoders import get_encoder\n"
            "v = get_encoder('lite').encode_texts(['a dog jumping into a lake'])\n"
            "assert v.shape[0] == 1\nprint('transformers' in sys.modules, 'onnxruntime' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
