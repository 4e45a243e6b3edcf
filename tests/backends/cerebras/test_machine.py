"""Machine presets carry the published figures; --target specs parse or fail clearly."""

import pytest

from cgc.backends.cerebras import WSE2, WSE3, get_machine
from cgc.errors import InputError


def test_wse2_preset() -> None:
    m = get_machine("wse2")
    assert m is WSE2
    assert (m.fabric_width, m.fabric_height) == (757, 996)
    assert (m.usable_x, m.usable_y, m.usable_width, m.usable_height) == (4, 1, 750, 994)
    assert m.usable_pes == 745_500
    assert (m.sram_bytes, m.sram_usable_bytes) == (49_152, 47_104)
    assert m.clock_hz == 850e6
    assert m.fmac_per_cycle == {"fp32": 1, "fp16": 4, "bf16": 4, "cb16": 4}
    assert (m.link_bytes_per_cycle, m.colors) == (4, 24)
    assert m.stream_bytes_per_s == 150e9
    assert m.simd_efficiency == 0.37
    # 745,500 PEs x 4 FMAC x 2 FLOP x 850 MHz
    assert m.peak_flops("fp16") == pytest.approx(5.0694e15)
    assert m.peak_flops("fp32") == pytest.approx(1.26735e15)


def test_wse3_preset() -> None:
    m = get_machine("wse3")
    assert m is WSE3
    assert (m.fabric_width, m.fabric_height) == (762, 1176)
    assert (m.usable_width, m.usable_height) == (755, 1174)
    assert m.usable_pes == 886_370
    assert m.fmac_per_cycle["cb16"] == 8
    assert m.sram_bytes == 48 * 1024


@pytest.mark.parametrize("spec", ["fabric:32x32", "fabric:7x3"])
def test_small_fabric_uses_all_pes_with_wse2_figures(spec: str) -> None:
    m = get_machine(spec)
    width, height = map(int, spec.split(":")[1].split("x"))
    assert m.name == spec
    assert (m.usable_x, m.usable_y, m.usable_width, m.usable_height) == (0, 0, width, height)
    assert m.usable_pes == width * height
    assert m.sram_usable_bytes == WSE2.sram_usable_bytes
    assert m.fmac_per_cycle == WSE2.fmac_per_cycle
    assert m.clock_hz == WSE2.clock_hz


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("wse4", "unknown target 'wse4'; use wse2, wse3 or fabric:WxH (e.g. fabric:32x32)"),
        ("fabric:32", "unknown target 'fabric:32'"),
        ("fabric:0x4", "target 'fabric:0x4': fabric sides must be between 1 and 4096 PEs"),
        ("fabric:5000x4", "fabric sides must be between 1 and 4096 PEs"),
        ("", "unknown target ''"),
    ],
)
def test_bad_target_is_an_input_error(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_machine(spec)


def test_unknown_precision_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown precision 'fp8'; choose from fp32, fp16, bf16"):
        WSE2.peak_flops("fp8")


def test_sustained_cycles_round_up_at_the_calibrated_efficiency() -> None:
    assert WSE2.sustained_cycles(37) == 100
    assert WSE2.sustained_cycles(38) == 103  # 38 / 0.37 = 102.7
    assert WSE2.sustained_cycles(85_184) == 230_228
    assert WSE2.vector_cycles(44, "fp32") == 44
    assert WSE2.vector_cycles(45, "fp16") == 12
