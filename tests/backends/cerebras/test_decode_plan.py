"""Planning a decode step graph on the wafer: the caches of every sequence in flight kept in
SRAM, a clear error when they do not fit, and a program the simulator runs as the IR does."""

import pytest
import torch

from cgc.backends.cerebras.decode_plan import compile_decode
from cgc.backends.cerebras.planner import PlanError
from cgc.backends.cerebras.report import estimate
from cgc.errors import InputError
from cgc.ir import interpret

TARGET = "fabric:24x24"


def test_the_plan_keeps_the_caches_of_every_sequence_in_flight(step_graphs) -> None:
    _, decode = step_graphs
    program = compile_decode(decode, {}, target=TARGET, prompt_tokens=4).program
    gen = program["generation"]
    d = estimate(program)["decode"]
    assert gen["batch"] == 1 and gen["capacity"] == 16 and gen["unfit_sequences"] is None
    assert d["sequences_in_flight"] > 1  # one sequence alone leaves the pipeline idle
    assert gen["cache_sequences"] >= d["sequences_in_flight"]
    # 2 layers x (k, v) x 4 heads x 16 slots x 16 features x 4 bytes per kept sequence
    assert gen["cache_bytes"] == gen["cache_sequences"] * 2 * 2 * 4 * 16 * 16 * 4
    assert gen["caches"] == [
        ["k_cache.0", "k_cache.0.next"],
        ["v_cache.0", "v_cache.0.next"],
        ["k_cache.1", "k_cache.1.next"],
        ["v_cache.1", "v_cache.1.next"],
    ]
    kernels = [k for r in program["regions"] for k in r["kernels"] if k["op"] == "cached_attention"]
    assert len(kernels) == 2
    for k in kernels:
        assert k["meta"]["cache_sequences"] == k["tiling"]["cache_sequences"]
        assert k["meta"]["cache_sequences"] == gen["cache_sequences"]


def test_the_simulator_runs_the_program_as_the_interpreter_runs_the_graph(step_graphs) -> None:
    _, decode = step_graphs
    artifact = compile_decode(decode, {}, target=TARGET, sequences=3)
    assert artifact.program["generation"]["cache_sequences"] == 3
    g = torch.Generator().manual_seed(0)
    caches = [torch.randn(1, 4, 16, 16, generator=g) for _ in range(4)]
    args = (torch.tensor([[7]]), torch.tensor([5]))
    want = interpret(decode, *args, *[c.clone() for c in caches])
    got = artifact.run(*args, *caches)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for cache, new, ref in zip(caches, got[1:], want[1:], strict=True):
        assert new is cache  # written in place
        torch.testing.assert_close(new[:, :, :5], ref[:, :, :5], rtol=0, atol=0)  # kept
        torch.testing.assert_close(new[:, :, 5], ref[:, :, 5], rtol=1e-5, atol=1e-5)  # new


def test_caches_that_do_not_fit_are_a_clear_error(step_graphs) -> None:
    _, decode = step_graphs
    with pytest.raises(PlanError) as e:
        compile_decode(decode, {}, target=TARGET, sequences=2000)
    assert str(e.value) == (
        "decode with the K/V caches of 2,000 sequences x 16 slots (31.2 MiB) does not fit "
        f"{TARGET}: pipelined: the weights and buffers of all 10 stages need 820 PEs, {TARGET} "
        "has 576 usable"
    )


def test_a_graph_that_is_not_a_decode_step_is_refused(step_graphs) -> None:
    prefill, _ = step_graphs
    with pytest.raises(InputError, match=r"graph @gpt_prefill is not a decode step"):
        compile_decode(prefill, {}, target=TARGET)


def test_a_plan_keeps_the_areas_its_period_was_found_with() -> None:
    """OLMo-2's one-token stages (q and k norms over the whole width) cost cycles that do not
    fall with their size; sizing them again after the period search found none that fits."""
    import transformers
    from zoo.families import CausalLM

    from cgc.generation import trace_step_graphs

    config = transformers.Olmo2Config(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, vocab_size=100, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    module = CausalLM(transformers.AutoModelForCausalLM.from_config(config)).eval()
    graphs = trace_step_graphs(module, batch=2, capacity=35, prompt_tokens=32)
    program = compile_decode(graphs.decode, {}, target="fabric:64x64", prompt_tokens=32).program
    assert program["generation"]["capacity"] == 35
