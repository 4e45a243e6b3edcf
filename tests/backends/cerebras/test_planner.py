"""Stages, region costs, mode choice and the plan read back from annotations."""

import pytest

from cgc import driver
from cgc.backends.cerebras import get_machine
from cgc.backends.cerebras.partition import plan
from cgc.backends.cerebras.planner import (
    PlanError,
    RegionCost,
    group_stages,
    part_range,
    read_plan,
    streaming_cycles,
)
from cgc.ir import parse

FABRIC = get_machine("fabric:32x32")


@pytest.fixture(scope="module")
def tiny():
    """tiny-111m at seq 16 after the default pipeline (2 blocks, d 64, vocab 97)."""
    loaded = driver.load_model("tiny-111m", seq_len=16)
    return driver.run_passes(driver.trace(loaded.module, loaded.example_inputs), "default")


def names(stage):
    return [n.outputs[0].name for n in stage.nodes]


def test_a_stage_per_weight_matrix_with_cheap_ops_where_their_input_is(tiny) -> None:
    stages, free = group_stages(tiny, FABRIC, "fp32")
    assert [(s.layer, names(s)) for s in stages] == [
        ("h.0", ["embedding", "embedding_1", "add", "layer_norm_1", "linear_1", "attention_1"]),
        ("h.0", ["linear_2", "add_1", "layer_norm_2"]),
        ("h.0", ["linear_3", "gelu_1"]),
        ("h.0", ["linear_4", "add_2", "layer_norm_3"]),
        ("h.1", ["linear_5", "attention"]),
        ("h.1", ["linear_6", "add_3", "layer_norm_4"]),
        ("h.1", ["linear_7", "gelu_2"]),
        ("h.1", ["linear_8", "add_4", "layer_norm_5"]),
        ("post", ["output"]),
    ]
    assert [s.anchor.outputs[0].name for s in stages] == [
        "linear_1", "linear_2", "linear_3", "linear_4",
        "linear_5", "linear_6", "linear_7", "linear_8", "output",
    ]  # fmt: skip
    assert free == {f"getitem{s}": 0 for s in ("", "_1", "_2")} | {
        f"getitem_{i}": 4 for i in (3, 4, 5)
    }
    assert [s.splittable for s in stages] == [False] * 8 + [True]


GRAPH = """\
graph @g(%x: f32[4,8]) {
  param %w: f32[16,8]
  param %w2: f32[8,16]
  %c = constant() {dtype="f32", shape=[], value=2.0} : f32[]
  %y = linear(%x, %w) : f32[4,16]
  %r = reshape(%y) {shape=[4,16]} : f32[4,16]
  %z = mul(%r, %c) : f32[4,16]
  %o = linear(%z, %w2) : f32[4,8]
  %e = exp(%o) : f32[4,8]
  return %e, %r
}
"""


def test_host_only_nodes_wait_and_constants_go_with_their_first_consumer() -> None:
    g = parse(GRAPH)
    stages, free = group_stages(g, FABRIC, "fp32")
    assert [names(s) for s in stages] == [["y", "z"], ["o", "e"]]
    assert free == {"c": 0, "r": 0}


def test_a_graph_without_pe_work_is_refused() -> None:
    g = parse(
        "graph @g(%x: f32[4]) {\n  %y = reshape(%x) {shape=[2,2]} : f32[2,2]\n  return %y\n}\n"
    )
    with pytest.raises(Exception, match="no operation that runs on PEs"):
        group_stages(g, FABRIC, "fp32")


def test_part_ranges_cover_the_features_once() -> None:
    assert [part_range(97, 4, p) for p in range(4)] == [(0, 25), (25, 50), (50, 75), (75, 97)]
    assert [part_range(3, 2, p) for p in range(2)] == [(0, 2), (2, 3)]


def test_region_cost_adds_kernels_and_budgets_the_anchor(tiny) -> None:
    stages, _ = group_stages(tiny, FABRIC, "fp32")
    cost = RegionCost(stages[1], 0, FABRIC, "fp32")  # linear + add + layer_norm
    kernels = cost.kernels(6, 7)
    cycles, sram = cost(6, 7)
    assert cycles == sum(k.cycles(6, 7) for k in kernels)
    assert sram == sum(k.sram_bytes(6, 7) for k in kernels) <= FABRIC.sram_usable_bytes
    others = kernels[1].sram_bytes(6, 7) + kernels[2].sram_bytes(6, 7)
    assert kernels[0].machine.sram_usable_bytes in (FABRIC.sram_usable_bytes - others, 47104)


def test_streaming_step_is_the_slower_of_compute_and_weights() -> None:
    m = get_machine("wse2")
    overhead = 750 + 994 + 20
    assert streaming_cycles(1_000, 0, m) == 1_000 + overhead
    # 150 GB/s at 850 MHz: 150e9 bytes take 850e6 cycles
    assert streaming_cycles(1_000, 150_000_000_000, m) == 850_000_000 + overhead


def test_auto_mode_pipelines_when_it_fits_and_streams_otherwise(tiny) -> None:
    assert plan(tiny.copy(), "fabric:32x32").mode == "pipelined"
    assert plan(tiny.copy(), "fabric:3x3").mode == "streaming"
    assert plan(tiny.copy(), "fabric:32x32", mode="streaming").mode == "streaming"
    with pytest.raises(PlanError) as e:
        plan(tiny.copy(), "fabric:3x3", mode="pipelined")
    assert str(e.value) == (
        "pipelined: the weights and buffers of all 9 stages need 27 PEs, fabric:3x3 has 9 usable"
    )


def test_a_model_that_fits_nowhere_says_what_did_not_fit(tiny) -> None:
    with pytest.raises(PlanError) as e:
        plan(tiny.copy(), "fabric:1x1")
    assert str(e.value) == (
        "the model fits fabric:1x1 in neither mode: pipelined: stage 0 needs 104,464 bytes per "
        "PE on all 1 PEs of fabric:1x1 (most for linear %linear_1: 51,200); a PE has 47,104; "
        "streaming: linear %linear_1 needs 51,200 bytes per PE on all 1 PEs of fabric:1x1 "
        "(with the live activations); a PE has 47,104"
    )


def test_bad_mode_target_and_precision_are_input_errors(tiny) -> None:
    with pytest.raises(Exception, match="unknown mode 'fast'"):
        plan(tiny.copy(), "fabric:32x32", mode="fast")
    with pytest.raises(Exception, match="unknown target 'wse9'"):
        plan(tiny.copy(), "wse9")
    with pytest.raises(Exception, match="unknown precision 'fp8'"):
        plan(tiny.copy(), "fabric:32x32", precision="fp8")


def test_read_plan_needs_annotations(tiny) -> None:
    with pytest.raises(Exception, match="not annotated by a partitioning pass"):
        read_plan(tiny.copy(), FABRIC, "fp32", "pipelined")
