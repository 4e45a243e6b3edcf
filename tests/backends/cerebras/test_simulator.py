"""The simulator executes the program as emitted and matches the IR interpreter.

Tolerances. fp32 programs differ from the interpreter only in the order fp32 sums are taken
(chains of K blocks, per-PE row sums): 1e-5 absolute on these logits (|logit| < 1). 16-bit
programs round every kernel's operands and outputs to the format (relative error u each, u the
unit roundoff) and accumulate in fp32; across a GPT the errors of a few dozen roundings add up
mostly at random: the bound used is 32u·(1 + |ref|), twice the 16u the 111M model stays within
(measured about 9u at its logits, |logit| < 3).
"""

import pytest
import torch

from cgc import driver
from cgc.backends.cerebras import UNIT_ROUNDOFF
from cgc.backends.cerebras import compile as compile_wafer
from cgc.backends.cerebras.program import dumps, loads
from cgc.backends.cerebras.simulator import Simulator
from cgc.errors import InputError
from cgc.ir import interpret


def traced(name: str, seq: int = 16):
    loaded = driver.load_model(name, seq_len=seq)
    graph = driver.run_passes(driver.trace(loaded.module, loaded.example_inputs), "default")
    return graph, loaded.example_inputs


@pytest.fixture(scope="module")
def tiny():
    return traced("tiny-111m")


@pytest.mark.parametrize("name", ["tiny-111m", "tiny-256m", "tiny-1.3b", "tiny-2.7b-mup"])
def test_fp32_program_matches_the_interpreter(name: str) -> None:
    graph, inputs = traced(name)
    want = interpret(graph, *inputs)
    artifact = compile_wafer(graph, {}, target="fabric:32x32")
    got = artifact.run(*inputs)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "cb16"])
def test_16_bit_programs_stay_within_32_unit_roundoffs(tiny, precision: str) -> None:
    graph, inputs = tiny
    want = interpret(graph, *inputs)[0]
    got = compile_wafer(graph.copy(), {}, target="fabric:32x32", precision=precision).run(*inputs)
    bound = 32 * UNIT_ROUNDOFF[precision] * (1 + want.abs())
    error = (got[0] - want).abs()
    assert bool((error <= bound).all()), float(error.max())
    assert float(error.max()) > 0  # the operands really were rounded


def test_streaming_program_matches_the_interpreter(tiny) -> None:
    graph, inputs = tiny
    artifact = compile_wafer(graph.copy(), {}, target="fabric:32x32", mode="streaming")
    torch.testing.assert_close(
        artifact.run(*inputs)[0], interpret(graph, *inputs)[0], atol=1e-5, rtol=0
    )


def test_split_vocabulary_projection_runs_part_by_part(fused_gpt) -> None:
    graph = fused_gpt(layers=1, d=32, heads=2, vocab=2000, seq=8)
    artifact = compile_wafer(graph, {}, target="fabric:32x32")
    parts = [r for r in artifact.program["regions"] if r["parts"] > 1]
    assert [r["kernels"][0]["features"] for r in parts] == [
        [0, 286], [286, 572], [572, 858], [858, 1144], [1144, 1430], [1430, 1716], [1716, 2000],
    ]  # fmt: skip
    ids = torch.randint(0, 2000, (1, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(artifact.run(ids)[0], interpret(graph, ids)[0], atol=1e-5, rtol=0)


def test_cycles_are_the_kernels_on_the_rectangles_executed(tiny) -> None:
    graph, _ = tiny
    artifact = compile_wafer(graph.copy(), {}, target="fabric:32x32")
    stated = [r["cycles"] for r in artifact.program["regions"]]
    assert artifact.simulator.region_cycles == stated
    report = artifact.report()
    assert report["period_cycles"] == max(stated)
    assert report["bottleneck"] == {"region": stated.index(max(stated)), "cycles": max(stated)}


def test_a_tiling_that_does_not_match_its_rectangle_is_refused(tiny) -> None:
    graph, inputs = tiny
    artifact = compile_wafer(graph.copy(), {}, target="fabric:32x32")
    program = loads(dumps(artifact.program), "program.json")
    program["regions"][2]["rect"]["cols"] -= 1
    with pytest.raises(InputError, match="the program's tiling does not match a 9x16 rectangle"):
        Simulator(program, artifact.weights).run(*inputs)


def test_a_program_for_a_differently_laid_out_machine_is_refused(tiny) -> None:
    graph, _ = tiny
    program = compile_wafer(graph.copy(), {}, target="fabric:32x32").program
    program = loads(dumps(program), "program.json")
    program["machine"]["usable"]["cols"] = 31
    with pytest.raises(InputError, match="laid out differently from this cgc's model"):
        Simulator(program, None)


def test_meta_weights_emit_a_program_that_refuses_to_run(tiny) -> None:
    graph, inputs = tiny
    meta = graph.copy()
    meta.weights = {}
    artifact = compile_wafer(meta, {}, target="fabric:32x32")
    assert artifact.weights is None
    assert artifact.program["weights"] == {
        "file": None,
        "reason": "meta weights: 29 of 29 parameters have no data",
    }
    with pytest.raises(InputError, match=r"^this program has no weights \(meta weights"):
        artifact.run(*inputs)
