"""Files and folders written atomically: staged under a temporary sibling, renamed into place at
the end, so a reader never sees half of one and a failure leaves nothing behind.

Temporary files and folders are created private (0600 / 0700); what is published gets the
modes any new file gets under the user's umask instead, as if written directly.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (from /proc where it can be read without changing it)."""
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^Umask:\s+([0-7]+)$", status, re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(path: Path) -> None:
    """Give `path` (and everything under a folder) the modes new files get: 0666 / 0777 less
    the umask."""
    mask = umask()
    if path.is_dir():
        for root, _, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
        return
    os.chmod(path, 0o666 & ~mask)


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        publish(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write a file through a temporary sibling and a rename; creates missing folders."""
    with staged_file(path) as staging:
        staging.write_bytes(data)
    return Path(path)


@contextmanager
def staged_folder(folder: str | Path) -> Iterator[Path]:
    """A temporary sibling folder to fill; it replaces `folder` when the block succeeds."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        publish(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
