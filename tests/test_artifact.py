"""Artifacts: save, load and run; incomplete, edited or newer artifacts are refused."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import cgc
from cgc import models
from cgc.errors import InputError


@pytest.fixture(scope="module")
def tiny():
    module = models.build("tiny-111m")
    inputs = models.example_inputs(module.config, 1, 8)
    return module, inputs, cgc.compile(module, inputs, backend="onnxruntime")


def test_save_load_run_round_trip(tiny, tmp_path: Path) -> None:
    module, inputs, artifact = tiny
    folder = artifact.save(tmp_path / "art")
    assert sorted(p.name for p in folder.iterdir()) == [
        "graph.cgc",
        "manifest.json",
        "model.onnx",
        "model.onnx.data",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime"
    assert manifest["inputs"] == [{"dtype": "i64", "name": "input_ids", "shape": [1, 8]}]
    assert manifest["outputs"] == [{"dtype": "f32", "name": "output", "shape": [1, 8, 97]}]
    for name, digest in manifest["files"].items():  # some are hashed while being written
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    (got,) = cgc.load(folder).run(*inputs)
    with torch.no_grad():
        torch.testing.assert_close(got, module(*inputs), atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob(".art.*")), "temporary folder left behind"


def test_saving_twice_gives_identical_files(tiny, tmp_path: Path) -> None:
    _, _, artifact = tiny
    a, b = artifact.save(tmp_path / "a"), artifact.save(tmp_path / "b")
    for name in ("model.onnx", "model.onnx.data", "graph.cgc", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda f: (f / "model.onnx.data").unlink(), "artifact is incomplete, model.onnx.data"),
        (lambda f: (f / "graph.cgc").write_text("x"), "graph.cgc was modified after compilation"),
        (
            lambda f: (f / "manifest.json").write_text(
                (f / "manifest.json").read_text().replace('"version": 1', '"version": 99')
            ),
            "artifact format version 99 is newer than this cgc reads (1)",
        ),
        (lambda f: (f / "manifest.json").write_text("{"), "unreadable manifest"),
    ],
)
def test_damaged_artifacts_are_refused(tiny, tmp_path: Path, tamper, message: str) -> None:
    folder = tiny[2].save(tmp_path / "art")
    tamper(folder)
    with pytest.raises(InputError, match=None) as err:
        cgc.load(folder)
    assert message in str(err.value)


def test_saving_over_a_non_artifact_folder_is_refused(tiny, tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a cgc artifact"):
        tiny[2].save(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
