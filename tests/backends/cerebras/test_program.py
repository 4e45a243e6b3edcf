"""The emitted program: schema, determinism, the listing, and refusing foreign programs."""

import json

import pytest

from cgc import driver
from cgc.backends.cerebras import compile as compile_wafer
from cgc.backends.cerebras import listing
from cgc.backends.cerebras.program import SCHEMA, dumps, loads
from cgc.errors import InputError


@pytest.fixture(scope="module")
def tiny():
    loaded = driver.load_model("tiny-111m", seq_len=16)
    return driver.run_passes(driver.trace(loaded.module, loaded.example_inputs), "default")


@pytest.fixture(scope="module")
def program(tiny):
    return compile_wafer(tiny.copy(), {}, target="fabric:32x32").program


def test_program_states_machine_mode_regions_routes_and_schedule(program) -> None:
    assert program["schema"] == SCHEMA == "cgc.cerebras.program/1"
    assert sorted(program) == [
        "graph", "inputs", "machine", "mode", "outputs", "params", "precision", "regions",
        "route_ops", "routes", "schedule", "schema", "steps", "values", "weights",
    ]  # fmt: skip
    assert program["machine"]["name"] == "fabric:32x32"
    assert (program["mode"], program["precision"], program["steps"]) == ("pipelined", "fp32", None)
    assert program["weights"] == {"file": "weights.safetensors", "reason": None}
    region = program["regions"][1]
    assert region["rect"] == {"x": 26, "y": 0, "cols": 6, "rows": 7}
    assert [k["op"] for k in region["kernels"]] == ["linear", "add", "layer_norm"]
    linear = region["kernels"][0]
    assert linear["operands"] == [
        "attention_1",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias",
    ]
    assert linear["weight_slots"] == [1, 2]
    assert linear["tiling"]["kernel"] == "gemm" and linear["precision"] == "fp32"
    assert region["cycles"] == sum(k["cycles"] for k in region["kernels"])
    assert program["schedule"][0]["run"] == [
        ["kernel", "embedding"], ["kernel", "embedding_1"], ["kernel", "add"],
        ["kernel", "layer_norm_1"], ["kernel", "linear_1"], ["route_op", "getitem"],
        ["route_op", "getitem_1"], ["route_op", "getitem_2"], ["kernel", "attention_1"],
    ]  # fmt: skip
    assert [r["color"] for r in program["routes"]][:2] == [0, 1]


def test_same_graph_gives_byte_identical_program(tiny, program) -> None:
    again = compile_wafer(tiny.copy(), {}, target="fabric:32x32").program
    assert dumps(again) == dumps(program)
    text = dumps(program)
    assert text.endswith("}\n") and json.loads(text) == json.loads(dumps(json.loads(text)))


def test_loads_refuses_other_and_newer_schemas() -> None:
    with pytest.raises(InputError, match=r"^p\.json: program schema version 2 is newer than"):
        loads(json.dumps({"schema": "cgc.cerebras.program/2"}), "p.json")
    with pytest.raises(InputError, match=r"^p\.json: not a cgc wafer program \(schema 'x/1'\)"):
        loads(json.dumps({"schema": "x/1"}), "p.json")
    with pytest.raises(InputError, match=r"^p\.json: not a cgc wafer program \(schema None\)"):
        loads("[]", "p.json")
    with pytest.raises(InputError, match=r"^p\.json: not a readable program"):
        loads("{", "p.json")


def test_listing_reads_region_by_region(program) -> None:
    text = listing.render(program)
    lines = text.splitlines()
    assert lines[0] == "cgc wafer program (cgc.cerebras.program/1) for graph @GPT"
    assert lines[2].startswith("mode pipelined, precision fp32 (fp32 accumulation); 9 regions")
    assert "stage 1 (h.0)" in lines
    start = lines.index("stage 1 (h.0)")
    assert lines[start + 1] == "  region 1  7x6 at x=26 y=0 (42 PEs)  band 0 column 1 cell 0"
    assert lines[start + 3].startswith(
        "    %linear_2 = linear(%attention_1, @transformer.h.0.attn.c_proj.weight, "
        "@transformer.h.0.attn.c_proj.bias)"
    )
    assert "  on the route: %getitem = slice(%linear_1) {axis=2, end=64, start=0, step=1}" in lines
    assert "    sends %add_1 to region 3 (13 hops) on color 0" in lines


def test_streaming_program_lists_its_steps(tiny) -> None:
    program = compile_wafer(tiny.copy(), {}, target="fabric:32x32", mode="streaming").program
    assert program["mode"] == "streaming"
    assert [(s["step"], s["layer"], s["stages"]) for s in program["steps"]] == [
        (0, "h.0", [0, 1, 2, 3]),
        (1, "h.1", [4, 5, 6, 7]),
        (2, "post", [8]),
    ]
    step = program["steps"][2]
    assert (
        step["cycles"]
        == max(step["compute_cycles"], step["stream_cycles"]) + step["overhead_cycles"]
    )
    assert "weight-streaming steps (each on the whole usable area, one after another):" in (
        listing.render(program)
    )
