"""Tokenizers: UTF-8 bytes, and a tokenizer.json read through the `tokenizers` library."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from cgc.errors import InputError
from cgc.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer


def test_bytes_round_trip_and_partial_characters() -> None:
    tok = load_tokenizer("bytes")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 256 and tok.eos_id is None
    ids = tok.encode("héllo")
    assert ids == [104, 195, 169, 108, 108, 111]
    assert tok.decode(ids) == "héllo"
    assert tok.decode(ids[:2]) == "h\ufffd"  # half of é


@pytest.fixture
def tokenizer_json(tmp_path: Path) -> Path:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<|endoftext|>"])
    bpe.train_from_iterator(["the cat sat on the mat", "the dog sat on the log"] * 5, trainer)
    path = tmp_path / "tokenizer.json"
    bpe.save(str(path))
    return path


def test_tokenizer_json_from_file_or_folder(tokenizer_json: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tokenizer_json)
    assert isinstance(tok, HFTokenizer)
    assert load_tokenizer(tmp_path).vocab_size == tok.vocab_size
    assert tok.eos_id == 1
    ids = tok.encode("the cat sat")
    assert tok.decode(ids) == "the cat sat"
    out = tmp_path / "run"
    out.mkdir()
    assert tok.save(out) == "tokenizer.json"
    assert load_tokenizer("tokenizer.json", base=out).encode("the cat sat") == ids


def test_missing_or_malformed_tokenizer_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no tokenizer.json there"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a readable tokenizer.json"):
        load_tokenizer(bad)
