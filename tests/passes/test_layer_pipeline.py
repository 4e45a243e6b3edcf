"""layer-pipeline: stage, region and slot annotations, IR text in -> IR text out."""

import pytest
from zoo import llama_1b

import cgc.passes.layer_pipeline  # noqa: F401  (registers the passes)
import cgc.passes.weight_streaming  # noqa: F401
from cgc import driver, models
from cgc.backends.cerebras.partition import plan
from cgc.backends.cerebras.planner import PlanError
from cgc.errors import InputError
from cgc.ir import parse
from cgc.passes import PassManager, run_passes
from cgc.passes.layer_pipeline import _least_known, _least_scan, _rebalance, topologies

MLP = """\
graph @mlp(%x: f32[1,8,16]) {
  param %w1: f32[64,16]
  param %b1: f32[64]
  param %w2: f32[16,64]
  param %b2: f32[16]
  %h = linear(%x, %w1, %b1) : f32[1,8,64] #{scope="h.0.mlp.c_fc"}
  %g = gelu(%h) {approximate="none"} : f32[1,8,64] #{scope="h.0.mlp.act"}
  %y = linear(%g, %w2, %b2) : f32[1,8,16] #{scope="h.0.mlp.c_proj"}
  %r = reshape(%y) {shape=[8,16]} : f32[8,16] #{scope="h.0"}
  %s = add(%r, %r) : f32[8,16] #{scope="h.0"}
  return %s
}
"""

PIPELINED = """\
  %h = linear(%x, %w1, %b1) : f32[1,8,64] #{region=[[8, 16, 128]], scope="h.0.mlp.c_fc", slot=[[0, 0, 0]], stage=0}
  %g = gelu(%h) {approximate="none"} : f32[1,8,64] #{region=[[8, 16, 128]], scope="h.0.mlp.act", slot=[[0, 0, 0]], stage=0}
  %y = linear(%g, %w2, %b2) : f32[1,8,16] #{region=[[6, 16, 96]], scope="h.0.mlp.c_proj", slot=[[1, 0, 0]], stage=1}
  %r = reshape(%y) {shape=[8, 16]} : f32[8,16] #{scope="h.0", stage=1}
  %s = add(%r, %r) : f32[8,16] #{region=[[6, 16, 96]], scope="h.0", slot=[[1, 0, 0]], stage=1}
"""  # noqa: E501


def body(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if line.startswith("  %"))


def test_each_linear_gets_a_band_and_cheap_ops_join_their_producer() -> None:
    out = run_passes(parse(MLP), "layer-pipeline{target=fabric:16x16}", verify_each=True)
    assert body(str(out)) == PIPELINED
    assert str(parse(str(out))) == str(out)  # the annotations are plain data: they round-trip


def test_stats_give_the_plan_in_numbers() -> None:
    pm = PassManager("layer-pipeline{target=fabric:16x16}")
    pm.run(parse(MLP))
    assert pm.results[0][1].stats == {
        "stages": 2, "regions": 2, "bands": 2, "pes": 224, "period_cycles": 444,
    }  # fmt: skip


def test_rerunning_replaces_earlier_annotations() -> None:
    once = run_passes(parse(MLP), "layer-pipeline{target=fabric:16x16}")
    twice = run_passes(parse(str(once)), "weight-streaming{target=fabric:16x16},"
                       "layer-pipeline{target=fabric:16x16}")  # fmt: skip
    assert str(twice) == str(once)


def test_options_are_checked() -> None:
    with pytest.raises(InputError, match="unknown target 'tpu'"):
        run_passes(parse(MLP), "layer-pipeline{target=tpu}")
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        run_passes(parse(MLP), "layer-pipeline{precision=fp8}")
    with pytest.raises(InputError, match="pass layer-pipeline has no option 'mode'"):
        run_passes(parse(MLP), "layer-pipeline{mode=auto}")


def test_a_graph_too_big_for_the_fabric_is_a_plan_error() -> None:
    with pytest.raises(PlanError) as e:
        run_passes(parse(MLP), "layer-pipeline{target=fabric:1x1}")
    assert str(e.value) == (
        "pipelined: the weights and buffers of all 2 stages need 2 PEs, fabric:1x1 has 1 usable"
    )


def test_searches_reuse_known_points() -> None:
    probed: list[int] = []

    def pred(x: int) -> bool:
        probed.append(x)
        return x >= 37

    points: list[int] = []
    assert _least_known(points, 1, 100, pred) == 37
    first = len(probed)
    assert _least_known(points, 1, 100, pred) == 37
    assert len(probed) - first <= 7  # known points answer: no new probe beyond the known ones
    assert _least_scan(1, 100, lambda x: 20 <= x <= 60) == 20  # false again near the top


def test_topologies_stack_regions_too_thin_for_their_band() -> None:
    # One 40-row band of a 40x40 fabric: 400 PEs are 10 columns (4:1), 50 PEs alone would be
    # 1.25 columns, so it shares a 10-column stack with the 350-PE region (5 and 35 rows).
    assert topologies([400, 50, 350, 800], 40, 40)[0] == [[[0], [1, 2], [3]]]
    # Without it, one band would make the 350-PE region 9 columns by 40 rows (over 4:1): two
    # bands of about 19 and 21 rows keep every region single and within 4:1.
    assert topologies([400, 350, 800], 40, 40)[0] == [[[0], [1]], [[2]]]


def test_rebalance_trades_margins_to_the_slowest() -> None:
    # Item 1's cycles fall in steps of 4 columns (tile rounding), so it needs 4 more to get
    # faster; items 0 and 2 give 2 each, staying faster than item 1 was.
    def time_at(item: int, size: int) -> int | None:
        if item == 1:
            return 1800 // (size // 4 * 4)
        return 1000 // size if size >= 2 else None

    sizes = [12, 16, 12]
    times = [time_at(i, s) for i, s in enumerate(sizes)]
    assert times == [83, 112, 83]
    _rebalance(sizes, times, lambda item: 100, time_at)
    assert (sizes, times) == ([10, 20, 10], [100, 90, 100])
    # No trade when the columns that would make the slowest faster exceed its limit.
    sizes, times = [12, 16, 12], [83, 112, 83]
    _rebalance(sizes, times, lambda item: 19, time_at)
    assert (sizes, times) == ([12, 16, 12], [83, 112, 83])


@pytest.mark.parametrize(
    ("model", "target"),
    [("cerebras-gpt-111m", "wse2"), ("cerebras-gpt-2.7b", "wse2"), ("cerebras-gpt-2.7b", "wse3")],
)
def test_real_sizes_plan_balanced_and_full(model: str, target: str) -> None:
    # Issue targets for layer-pipelined plans: bottleneck <= 1.05 x mean region cycles and
    # >= 90% of the usable PEs assigned (bench/plan_quality.py prints every size).
    config = models.get_config(model)
    module = models.build(model, device="meta")
    graph = run_passes(driver.trace(module, models.example_inputs(config, 1, 128)), "default")
    p = plan(graph, target)
    cycles = [r.cycles for r in p.regions]
    assert p.mode == "pipelined"
    assert max(cycles) / (sum(cycles) / len(cycles)) <= 1.05
    assert sum(r.pes for r in p.regions) >= 0.9 * p.machine.usable_pes


def test_a_llama_shaped_1b_model_plans_balanced_and_full() -> None:
    # Issue 11, must-show 4: tests/zoo/llama_1b.py (1.10B parameters: width 2048, 16 layers,
    # 32 query heads on 8 key-value heads, SwiGLU 8192, RoPE) meets the same targets on wse2.
    # Measured: bottleneck 1.038 x mean, 99.8% of the PEs, 98 regions.
    module, inputs = llama_1b.get_model()
    graph = run_passes(driver.trace(module, inputs), "default")
    counts = graph.op_counts()
    fused = ("attention", "swiglu", "rms_norm", "rotary_embedding", "linear")
    assert {op: counts[op] for op in fused} == {
        "attention": 16,
        "swiglu": 16,
        "rms_norm": 33,
        "rotary_embedding": 32,
        "linear": 81,  # q, k, v, o and down per layer, the LM head
    }
    p = plan(graph, "wse2")
    cycles = [r.cycles for r in p.regions]
    assert p.mode == "pipelined"
    assert max(cycles) / (sum(cycles) / len(cycles)) <= 1.05
    assert sum(r.pes for r in p.regions) >= 0.9 * p.machine.usable_pes
    # every SwiGLU holds its two weights in a region of its own, its block's layer
    swiglu = [s for s in p.stages if s.anchor is not None and s.anchor.op == "swiglu"]
    assert [(len(s.nodes), s.layer) for s in swiglu] == [(1, f"h.{i}") for i in range(16)]
