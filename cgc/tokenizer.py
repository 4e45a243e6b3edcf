"""Tokenizers for training data and generation: UTF-8 bytes, or a Hugging Face tokenizer.json.

Byte-level tokens need no vocabulary file, so a model trained from scratch on any text has one
(256 ids). A `tokenizer.json` is read with the `tokenizers` library, the format every Hugging
Face checkpoint ships. A run folder records which one it used (`spec`), so generation later
decodes with the tokenizer the model was trained with.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from cgc.errors import InputError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    """Text to token ids and back."""

    vocab_size: int
    eos_id: int | None  # the end-of-text token, where the tokenizer has one

    @property
    def spec(self) -> str:
        """How to name this tokenizer again: "bytes", or the path of its tokenizer.json."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; bytes that do not form whole characters become U+FFFD."""

    def save(self, folder: Path) -> str:
        """Write what is needed to load this tokenizer into `folder`; returns its spec there."""


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255, no end-of-text token."""

    vocab_size = 256
    eos_id = None
    spec = "bytes"

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of `text`."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text; a partial character at either end, or an id past 255 (a model
        with a larger vocabulary generated it), becomes U+FFFD."""
        return bytes(i if 0 <= i < 256 else 0xFF for i in ids).decode("utf-8", errors="replace")

    def save(self, folder: Path) -> str:
        """Nothing to write: bytes need no vocabulary."""
        return self.spec

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A Hugging Face `tokenizer.json`, through the `tokenizers` library."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as Backend

        self.path = path
        try:
            self._backend = Backend.from_file(str(path))
        except Exception as e:  # the library raises bare Exceptions for malformed files
            raise InputError(f"{path}: not a readable tokenizer.json ({e})") from None
        self.vocab_size = self._backend.get_vocab_size(with_added_tokens=True)
        self.eos_id = next(
            (
                self._backend.token_to_id(t)
                for t in ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
                if self._backend.token_to_id(t) is not None
            ),
            None,
        )

    @property
    def spec(self) -> str:
        return str(self.path)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens added."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens included as written."""
        return self._backend.decode(ids, skip_special_tokens=False)

    def save(self, folder: Path) -> str:
        """Copy tokenizer.json into `folder`."""
        target = folder / TOKENIZER_FILE
        if target.resolve() != self.path.resolve():
            shutil.copyfile(self.path, target)
        return TOKENIZER_FILE

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path})"


def load_tokenizer(spec: str | Path, base: Path | None = None) -> Tokenizer:
    """`"bytes"`, a tokenizer.json, or a folder holding one; relative paths from `base`."""
    if str(spec) == "bytes":
        return ByteTokenizer()
    path = Path(spec)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise InputError(f"{spec}: no tokenizer.json there; give 'bytes' or a tokenizer.json path")
    return HFTokenizer(path)
