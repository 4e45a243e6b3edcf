"""Crash reproducers: a failing pass leaves its input IR and the command that replays it."""

from __future__ import annotations

import shlex
import shutil

import pytest

from cgc.debug import CrashReproducer, read_ir
from cgc.ir import Graph
from cgc.passes import Pass, PassContext, PassManager, PassResult, register_pass, unregister_pass


class Explode(Pass):
    """Raise on graphs holding fused attention (a crashing pass)."""

    name = "explode"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        count = graph.op_counts().get("attention", 0)
        if count:
            raise RuntimeError(f"explode: cannot handle {count} attention nodes")
        return PassResult(False)


@pytest.fixture
def explode():
    register_pass(Explode)
    yield Explode
    unregister_pass(Explode.name)


PIPELINE = "canonicalize,fuse-attention,explode,fuse-gelu"


def test_a_crashing_pass_leaves_a_reproducer_that_replays_the_error(
    tiny, tmp_path, explode, cgc
) -> None:
    path = tmp_path / "crash" / "reproducer.cgc"
    result = cgc(
        "compile", "tiny-111m", "--seq-len", "8", "--backend", "onnxruntime",
        "-o", tmp_path / "art", "--passes", PIPELINE, "--reproducer", path,
    )  # fmt: skip
    assert result.exit_code == 3
    weights = tmp_path / "crash" / "reproducer.safetensors"
    command = f"cgc opt {path} --weights {weights} --passes explode"
    assert result.stderr.splitlines()[-3:] == [
        f"pass explode failed; reproducer written to {path}",
        f"replay with: {command}",
        "internal error: RuntimeError: explode: cannot handle 2 attention nodes "
        "(rerun with --debug and report it)",
    ]
    assert not (tmp_path / "art").exists()
    assert path.read_text().startswith(
        "// cgc crash reproducer: pass explode (3/4) raised RuntimeError: explode: cannot "
        "handle 2 attention nodes\n"
        "// pipeline: explode\n"
        f"// full pipeline: {PIPELINE}\n"
        f"// replay: {command}\n"
        "graph @GPT(%input_ids: i64[1,8]) {\n"
    )
    # The file is the IR the pass was given: the traced graph after the first two passes.
    expected = tiny.graph()
    PassManager("canonicalize,fuse-attention").run(expected)
    assert str(read_ir(path, weights)) == str(expected)

    args = shlex.split(command)[1:] + ["--reproducer", tmp_path / "again.cgc"]
    replay = cgc(*args, "--debug")
    assert type(replay.exception) is RuntimeError
    assert str(replay.exception) == "explode: cannot handle 2 attention nodes"
    assert cgc(*args).stderr.splitlines()[-1] == result.stderr.splitlines()[-1]
    again = (tmp_path / "again.cgc").read_text().splitlines()
    assert again[4:] == path.read_text().splitlines()[4:]  # the same IR, under a new header


def test_the_python_instrument_notes_the_command_on_the_error(tiny, explode) -> None:
    pm = PassManager(PIPELINE)
    repro = CrashReproducer().attach(pm)
    with pytest.raises(RuntimeError) as info:
        pm.run(tiny.graph())
    assert repro.path.name == "reproducer.cgc" and repro.path.parent.name.startswith("cgc-")
    assert repro.command == (
        f"cgc opt {repro.path} --weights {repro.weights_path} --passes explode"
    )
    assert info.value.__notes__ == [
        f"reproducer written to {repro.path}\nreplay with: {repro.command}"
    ]
    shutil.rmtree(repro.path.parent)
