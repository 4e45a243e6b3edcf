"""Training data: UTF-8 text from a file, a folder of files, or `stdlib` (the Python standard
library's own sources, a real corpus on any machine without a download), tokenized and cut into
fixed windows of seq_len + 1 tokens (inputs and their next-token targets).

A seeded share of the windows is held out for validation. Training windows are served in a
seeded shuffled order, epoch after epoch; the position in that stream (windows served so far)
is all a checkpoint needs to resume exactly where it left off.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cgc.errors import InputError
from cgc.tokenizer import Tokenizer

STDLIB = "stdlib"
VAL_SHARE = 0.05  # of the windows, held out for validation
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Text:
    """The documents of a data source and how to describe it."""

    documents: list[str]
    description: str


def read_text(source: str | Path) -> Text:
    """The documents of `source`: a UTF-8 file, a folder (every file under it, sorted, hidden
    ones and ones that are not UTF-8 skipped), or `stdlib` (its .py files)."""
    if str(source) == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(
            p for p in root.rglob("*.py") if not _SKIPPED_DIRS & set(p.relative_to(root).parts)
        )
        return _read_files(files, f"the Python standard library ({root})")
    path = Path(source)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not text:
            raise InputError(f"{path}: the file is empty")
        return Text([text], str(path))
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        return _read_files(files, str(path))
    check_source(source)
    raise InputError(f"{source}: not a text file or a folder")


def check_source(source: str | Path) -> None:
    """Refuse a data source that does not exist (before reading it, or starting workers)."""
    if str(source) != STDLIB and not Path(source).exists():
        raise InputError(
            f"{source}: no such file or folder (give a text file, a folder or 'stdlib')"
        )


def _read_files(files: list[Path], where: str) -> Text:
    documents, skipped = [], 0
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1
            continue
        if text:
            documents.append(text)
    if not documents:
        raise InputError(f"{where}: no UTF-8 text in it ({len(files)} files)")
    note = f", {skipped} skipped (not UTF-8)" if skipped else ""
    return Text(documents, f"{where}: {len(documents)} files{note}")


def tokenize(text: Text, tokenizer: Tokenizer, *, bar: bool = True) -> np.ndarray:
    """All documents as one int32 token stream, separated by end-of-text where the tokenizer
    has one; `bar` shows progress over many documents."""
    sep = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    pieces = []
    docs = text.documents
    shown = tqdm(docs, desc="tokenizing", unit="file", disable=not bar or len(docs) < 100)
    for i, doc in enumerate(shown):
        pieces.append(np.asarray(tokenizer.encode(doc) + (sep if i < len(docs) - 1 else [])))
    return np.concatenate(pieces).astype(np.int32)


class Windows:
    """Fixed windows of seq_len + 1 tokens, split into training and validation, served in
    seeded shuffled batches."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, val_share: float = VAL_SHARE):
        count = (len(tokens) - 1) // seq_len
        if count < 2:
            raise InputError(
                f"the text has {len(tokens)} tokens; training on windows of {seq_len + 1} needs "
                f"at least {2 * seq_len + 1} (one window to train on, one to validate on)"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        order = np.random.default_rng([seed, 0]).permutation(count)
        held = max(1, round(count * val_share))
        self.val = np.sort(order[:held])
        self.train = np.sort(order[held:])
        self._epoch: tuple[int, np.ndarray] | None = None

    @property
    def digest(self) -> str:
        """A fingerprint of the token stream and windowing, so a resumed run can check that it
        is given the same data."""
        h = hashlib.sha256(self.tokens.tobytes())
        h.update(f"{self.seq_len}/{self.seed}".encode())
        return h.hexdigest()[:16]

    def window(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]

    def _stack(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.window(int(i)) for i in indices]).astype(np.int64))

    def train_batch(self, position: int, batch: int) -> torch.Tensor:
        """The [batch, seq_len + 1] windows at stream positions position .. position + batch - 1:
        each epoch is a fresh seeded permutation of the training windows."""
        return self._stack(self._train_index(p) for p in range(position, position + batch))

    def _train_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.train))
        if self._epoch is None or self._epoch[0] != epoch:
            order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.train))
            self._epoch = (epoch, order)
        return self.train[self._epoch[1][offset]]

    def val_batches(self, batch: int, count: int) -> list[torch.Tensor]:
        """Up to `count` validation batches, always the same ones (full batches only; the last
        is dropped when short, so every evaluation sees equal shapes)."""
        usable = min(count, len(self.val) // batch) or 1
        return [
            self._stack(self.val[(i * batch + j) % len(self.val)] for j in range(batch))
            for i in range(usable)
        ]
