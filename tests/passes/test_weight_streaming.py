"""weight-streaming: steps by transformer block, the whole wafer per stage, what does not fit."""

import pytest

import cgc.passes.layer_pipeline  # noqa: F401  (registers the passes)
import cgc.passes.weight_streaming  # noqa: F401
from cgc import driver
from cgc.backends.cerebras import get_machine
from cgc.backends.cerebras.planner import PlanError, group_stages
from cgc.ir import parse
from cgc.passes import PassManager, run_passes
from cgc.passes.weight_streaming import live_bytes, streaming_steps

MLP = """\
graph @mlp(%x: f32[1,8,16]) {
  param %w1: f32[64,16]
  param %w2: f32[16,64]
  %h = linear(%x, %w1) : f32[1,8,64] #{scope="h.0.mlp.c_fc"}
  %g = gelu(%h) {approximate="none"} : f32[1,8,64] #{scope="h.0.mlp.act"}
  %y = linear(%g, %w2) : f32[1,8,16] #{scope="h.1.mlp.c_proj"}
  %r = reshape(%y) {shape=[8,16]} : f32[8,16] #{scope="h.1"}
  return %r
}
"""


def test_each_stage_gets_the_whole_usable_area_and_a_step_per_block() -> None:
    out = run_passes(parse(MLP), "weight-streaming{target=fabric:16x16,precision=bf16}")
    lines = [line.strip() for line in str(out).splitlines() if line.startswith("  %")]
    assert lines == [
        '%h = linear(%x, %w1) : f32[1,8,64] #{region=[[16, 16, 256]], scope="h.0.mlp.c_fc", '
        "stage=0, step=0}",
        '%g = gelu(%h) {approximate="none"} : f32[1,8,64] #{region=[[16, 16, 256]], '
        'scope="h.0.mlp.act", stage=0, step=0}',
        '%y = linear(%g, %w2) : f32[1,8,16] #{region=[[16, 16, 256]], scope="h.1.mlp.c_proj", '
        "stage=1, step=1}",
        '%r = reshape(%y) {shape=[8, 16]} : f32[8,16] #{scope="h.1", stage=1, step=1}',
    ]


def test_stats_sum_the_steps() -> None:
    pm = PassManager("weight-streaming{target=fabric:16x16}")
    pm.run(parse(MLP))
    stats = pm.results[0][1].stats
    assert {k: stats[k] for k in ("stages", "steps", "regions", "pes")} == {
        "stages": 2, "steps": 2, "regions": 2, "pes": 256,
    }  # fmt: skip
    assert stats["period_cycles"] > 2 * (16 + 16 + 20)  # two steps, each at least a broadcast


def test_live_activations_cross_step_boundaries() -> None:
    g = parse(MLP)
    machine = get_machine("fabric:16x16")
    stages, free = group_stages(g, machine, "fp32")
    steps = streaming_steps(stages)
    assert [[s.index for s in step] for step in steps] == [[0], [1]]
    assert live_bytes(g, steps, free, "fp32") == [0, 8 * 64 * 4]  # %g waits for step 1
    assert live_bytes(g, steps, free, "bf16") == [0, 8 * 64 * 2]


def test_a_kernel_too_big_even_for_the_whole_wafer_is_named() -> None:
    big = MLP.replace("f32[64,16]", "f32[4096,16]").replace("f32[1,8,64]", "f32[1,8,4096]")
    big = big.replace("f32[16,64]", "f32[16,4096]")
    with pytest.raises(PlanError) as e:
        run_passes(parse(big), "weight-streaming{target=fabric:2x2}")
    assert str(e.value).startswith("streaming: linear %h needs ")
    assert str(e.value).endswith(
        " bytes per PE on all 4 PEs of fabric:2x2 (with the live activations); a PE has 47,104"
    )


def test_gpt_steps_follow_the_transformer_blocks() -> None:
    loaded = driver.load_model("tiny-111m", seq_len=8)
    graph = driver.run_passes(driver.trace(loaded.module, loaded.example_inputs), "default")
    run_passes(graph, "weight-streaming{target=fabric:16x16}")
    steps = {}
    for node in graph.nodes:
        steps.setdefault(node.meta["step"], set()).add(
            node.meta.get("scope", "").split(".")[:3][-1]
        )
    assert sorted(steps) == [0, 1, 2]
    assert [n.meta["step"] for n in graph.nodes if n.op == "embedding"] == [0, 0]
    assert graph.nodes[-1].meta["step"] == 2  # the vocabulary projection
