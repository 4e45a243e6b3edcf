"""`cgc train --systems N`: the workers' world, failures named by rank, and end to end: two
workers give one process's losses (on ONNX Runtime and on simulated wafers); a worker killed
mid-run stops it, and --resume completes it with the parameters of an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cgc.cli import main
from cgc.errors import CgcError
from cgc.training.distributed import PeerLost, WorkerFailed, World, _failure

RUN = ["--steps", "12", "--batch", "4", "--seq-len", "16", "--save-every", "3", "--val-every", "6"]


def test_world_from_the_launcher_environment(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    world = World.from_env()
    assert world == World(rank=3, size=4, local_size=2) and not world.is_main
    batch = torch.arange(8).reshape(8, 1)
    assert world.shard(batch).flatten().tolist() == [6, 7]
    assert world.threads(None) == max(1, (os.cpu_count() or 1) // 2)
    assert world.threads(5) == 5


def _failed(exitcode, message="", signal_name="<N/A>", error_file="<N/A>"):
    return SimpleNamespace(
        exitcode=exitcode, message=message, signal_name=lambda: signal_name, error_file=error_file
    )


def test_failures_name_the_worker_that_died(tmp_path) -> None:
    error_file = tmp_path / "error.json"
    error_file.write_text("{}")
    lost = {"message": f"{PeerLost.__name__}: rank 0: summing the gradients failed, ..."}
    failures = {0: _failed(1, lost, error_file=str(error_file)), 1: _failed(-9, "", "SIGKILL")}
    error = _failure(failures, 2)
    assert isinstance(error, WorkerFailed) and error.exit_code == 1
    assert str(error) == "worker rank 1 of 2 was killed by SIGKILL"
    crashed = {1: _failed(3, {"message": "ValueError: boom\nmore"}, error_file=str(error_file))}
    assert str(_failure(crashed, 4)) == "worker rank 1 of 4 exited with code 3: ValueError: boom"
    bad = {0: _failed(1, {"message": "_InputFailure: data.txt: not UTF-8 text"})}
    error = _failure(bad, 2)
    assert type(error) is CgcError and str(error) == "data.txt: not UTF-8 text"


def _cgc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_batch_the_systems_cannot_share_is_refused(corpus, tmp_path) -> None:
    result = _cgc("train", "tiny-111m", "--data", corpus, "--batch", "3", "--systems", "2",
                  "-o", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "error: --batch 3 (the global batch) is not divisible by --systems 2; give a multiple of 2"
    )
    assert not (tmp_path / "run").exists()


def test_fp16_on_several_wafers_is_refused(corpus, tmp_path) -> None:
    result = _cgc("train", "tiny-111m", "--data", corpus, "--backend", "cerebras",
                  "--precision", "fp16", "--systems", "2", "-o", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --systems 2: data parallel on the wafer runs fp32, cb16 or bf16; fp16's dynamic "
        "loss scaling is not shared between systems"
    )
    assert not (tmp_path / "run").exists()


def _python_m_cgc(*args, **kwargs) -> subprocess.Popen:
    """`python -m cgc ARGS` (the form torchrun runs)."""
    command = [sys.executable, "-m", "cgc", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_missing_data_is_refused_before_workers_start(tmp_path) -> None:
    result = _cgc("train", "tiny-111m", "--data", tmp_path / "missing.txt", "--systems", "2",
                  "-o", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 2 and "starting 2 workers" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'missing.txt'}: no such file or folder "
        "(give a text file, a folder or 'stdlib')"
    )


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


@pytest.fixture(scope="module")
def two_systems(corpus, tmp_path_factory) -> Path:
    """An uninterrupted 12-step run of tiny-111m on two workers (global batch 4)."""
    run = tmp_path_factory.mktemp("dp") / "two"
    process = _python_m_cgc("train", "tiny-111m", "--data", corpus, *RUN, "--systems", "2",
                            "-o", run)  # fmt: skip
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert f"{run}: 12 steps, loss " in out
    assert "starting 2 workers (torch.distributed, gloo)" in err
    assert err.count("compiling the training step") == 1  # progress from rank 0 only
    return run


def test_two_systems_give_the_losses_of_one(two_systems, corpus, tmp_path) -> None:
    one = tmp_path / "one"
    result = _cgc("train", "tiny-111m", "--data", corpus, *RUN, "-o", one)
    assert result.exit_code == 0, result.output
    expected, got = _records(one), _records(two_systems)
    assert [r["step"] for r in got] == list(range(13))
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=0), (a["step"], key)
    assert json.loads((two_systems / "run.json").read_text())["options"]["systems"] == 2
    assert sorted(p.name for p in two_systems.iterdir()) == [
        "checkpoint-000009", "checkpoint-000012", "loss.png", "metrics.jsonl", "run.json",
    ]  # fmt: skip


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _holds(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    return any(os.path.realpath(fd) == str(path) for fd in fds if fd.exists())


def test_a_killed_worker_stops_the_run_and_resume_completes_it(two_systems, corpus, tmp_path):
    run = tmp_path / "killed"
    process = _python_m_cgc("train", "tiny-111m", "--data", corpus, *RUN, "--systems", "2",
                            "-o", run)  # fmt: skip
    victim, deadline = None, time.monotonic() + 600
    while victim is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:  # step 4 is done
            workers = [p for p in _children(process.pid) if b"spawn_main" in
                       Path(f"/proc/{p}/cmdline").read_bytes()]  # fmt: skip
            rank0 = [p for p in workers if _holds(p, metrics.resolve())]
            victim = next(p for p in workers if p not in rank0)
            os.kill(victim, signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert victim is not None, err
    assert process.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: worker rank 1 of 2 was killed by SIGKILL after step (\d+); "
        rf"--resume {re.escape(str(run))} continues from checkpoint-0000(0[369]|12)",
        last,
    ), last
    assert "Traceback" not in err
    resumed = _python_m_cgc("train", "tiny-111m", "--data", corpus, "--resume", run)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert _records(run) == _records(two_systems)
    for name in ("model.safetensors", "optimizer.safetensors"):
        expected = load_file(two_systems / "checkpoint-000012" / name)
        got = load_file(run / "checkpoint-000012" / name)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), key


def test_two_wafers_give_the_losses_of_one(corpus, tmp_path) -> None:
    """Each worker simulates one system on its half of the batch; the host sums and updates."""
    run = ["train", "tiny-111m", "--data", corpus, "--steps", "3", "--batch", "2", "--seq-len",
           "8", "--backend", "cerebras", "--target", "fabric:16x16", "--val-every", "3",
           "--save-every", "3"]  # fmt: skip
    result = _cgc(*run, "-o", tmp_path / "one")
    assert result.exit_code == 0, result.output
    process = _python_m_cgc(*run, "--systems", "2", "-o", tmp_path / "two")
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    expected, got = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    for a, b in zip(expected, got, strict=True):
        for key in ("loss", "lr", "grad_norm", "val_loss"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=0), (a["step"], key)
    for a, b in zip(expected[1:], got[1:], strict=True):  # one system's share: half the tokens
        assert "wafer_cluster_tokens_per_s" not in a
        assert 0 < b["wafer_tokens_per_s"] < a["wafer_tokens_per_s"]
        assert (
            b["wafer_tokens_per_s"] < b["wafer_cluster_tokens_per_s"] <= 2 * b["wafer_tokens_per_s"]
        )
