"""Training data: sources, tokenizing, windows, the held-out split and resumable batches."""

import numpy as np
import pytest
import torch

from cgc.errors import InputError
from cgc.tokenizer import ByteTokenizer
from cgc.training.data import STDLIB, Windows, read_text, tokenize


def test_a_file_a_folder_and_the_standard_library(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("héllo")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("x = 1\n")
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    text = read_text(tmp_path)
    assert text.documents == ["héllo", "x = 1\n"]
    assert text.description == f"{tmp_path}: 2 files, 1 skipped (not UTF-8)"
    assert read_text(tmp_path / "a.txt").documents == ["héllo"]
    tokens = tokenize(text, ByteTokenizer())
    assert tokens.dtype == np.int32
    assert bytes(tokens.tolist()) == "héllox = 1\n".encode()  # bytes have no end-of-text
    stdlib = read_text(STDLIB)
    assert len(stdlib.documents) > 500 and "the Python standard library" in stdlib.description
    assert any("def " in doc for doc in stdlib.documents[:50])


def test_bad_sources_are_clear_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        read_text(tmp_path / "missing")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="the file is empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_text(tmp_path / "latin.txt")
    (tmp_path / "void").mkdir()
    with pytest.raises(InputError, match="no UTF-8 text in it"):
        read_text(tmp_path / "void")
    with pytest.raises(InputError, match="the text has 12 tokens; .* needs at least 17"):
        Windows(np.arange(12, dtype=np.int32), seq_len=8, seed=0)


def test_windows_split_shuffle_and_resume() -> None:
    tokens = np.arange(1001, dtype=np.int32)
    w = Windows(tokens, seq_len=10, seed=3, val_share=0.1)
    assert len(w.train) + len(w.val) == 100 and len(w.val) == 10
    assert not set(w.train) & set(w.val)
    batch = w.train_batch(0, 4)
    assert batch.shape == (4, 11) and batch.dtype == torch.int64
    assert torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(4, 10, dtype=torch.int64))
    # one epoch visits every training window once, in a seeded order
    epoch = torch.cat([w.train_batch(p, 10) for p in range(0, 90, 10)])
    assert sorted((epoch[:, 0] // 10).tolist()) == sorted(w.train.tolist())
    assert (epoch[:, 0] // 10).tolist() != sorted(w.train.tolist())
    # the stream is a function of the position alone: a new object resumes it exactly
    again = Windows(tokens, seq_len=10, seed=3, val_share=0.1)
    assert torch.equal(again.train_batch(95, 4), w.train_batch(95, 4))  # across the epoch edge
    assert not torch.equal(Windows(tokens, 10, seed=4).train_batch(0, 4), batch)
    val = w.val_batches(batch=3, count=8)
    assert len(val) == 3 and all(v.shape == (3, 11) for v in val)
    assert w.digest == again.digest != Windows(tokens, 10, seed=4).digest
