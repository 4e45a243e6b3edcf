"""Published files and folders honour the umask, not the private modes of temporary files."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from cgc.files import staged_file, staged_folder, umask, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_modes_follow_the_umask(tmp_path, mask) -> None:
    assert umask() == mask
    write_atomic(tmp_path / "a" / "f.txt", b"x")
    assert _mode(tmp_path / "a" / "f.txt") == 0o666 & ~mask
    with staged_folder(tmp_path / "run") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "w.bin").write_bytes(b"1")
        save_file({"w": torch.zeros(2)}, str(staging / "weights.safetensors"))  # made 0600
        assert _mode(staging) == 0o700  # private while it is being written
    assert _mode(tmp_path / "run") == 0o777 & ~mask
    assert _mode(tmp_path / "run" / "sub" / "w.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "run" / "weights.safetensors") == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_leaves_nothing(tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_file(tmp_path / "keep.txt") as staging:
        staging.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "out") as staging:
        (staging / "x").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"


def test_compiled_artifacts_honour_the_umask(tmp_path) -> None:
    from cgc import driver, models

    old = os.umask(0o027)

    try:
        module = models.build("tiny-111m")
        inputs = models.example_inputs(module.config, 1, 8)
        folder = driver.compile(module, inputs, "onnxruntime").save(tmp_path / "art")
        assert _mode(folder) == 0o750
        assert {_mode(p) for p in folder.iterdir()} == {0o640}
    finally:
        os.umask(old)
