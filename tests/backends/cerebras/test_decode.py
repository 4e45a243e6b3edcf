"""Decode figures of a wafer program: the token's longest path through regions and hops, the
pipeline's period, the sequences in flight and the throughputs, on a program built by hand."""

from cgc.backends.cerebras.decode import estimate, render, size_text, token_latency


def _program(cache_sequences: int = 1) -> dict:
    """Four regions: 0 -> 1 -> the two parts 2 and 3 of a split projection; a residual 0 -> 2."""
    cycles = [100, 50, 30, 40]
    stages = [0, 1, 2, 2]
    return {
        "machine": {"name": "wse2", "clock_hz": 850e6},
        "regions": [
            {"id": i, "stage": s, "cycles": c}
            for i, (s, c) in enumerate(zip(stages, cycles, strict=True))
        ],
        "routes": [
            {"source": 0, "targets": [1], "hops": [2]},
            {"source": 1, "targets": [2, 3], "hops": [5, 1]},
            {"source": 0, "targets": [2], "hops": [20]},
        ],
        "generation": {
            "batch": 1,
            "capacity": 16,
            "cache_sequences": cache_sequences,
            "cache_bytes": 4096 * cache_sequences,
            "caches": [["k_cache.0", "k_cache.0.next"], ["v_cache.0", "v_cache.0.next"]],
            "prompt_tokens": 4,
            "unfit_sequences": None,
        },
    }


def test_the_latency_is_the_longest_path_through_regions_and_hops() -> None:
    # 0 ends at 100, 1 at 100 + 2 + 50 = 152; part 2 starts at max(152 + 5, 100 + 20) and
    # ends at 187, part 3 at 152 + 1 + 40 = 193: the path 0 -> 1 -> 3 with 3 hops.
    assert token_latency(_program(), [100, 50, 30, 40]) == (193, 3)
    # the simulator's cycles replace the program's
    assert token_latency(_program(), [100, 50, 300, 40]) == (457, 7)


def test_the_pipeline_figures() -> None:
    d = estimate(_program())
    assert (d["latency_cycles"], d["period_cycles"], d["passes_in_flight"]) == (193, 100, 2)
    assert d["sequences_in_flight"] == 2
    assert d["pipeline_tokens_per_s"] == 8.5e6  # one token per 100 cycles at 850 MHz
    assert d["single_tokens_per_s"] == 4_404_150  # 850e6 / 193, six significant digits
    assert d["kept_tokens_per_s"] == d["single_tokens_per_s"]  # one cache kept: one in flight
    assert d["latency_us"] == 0.227059  # 193 / 850
    assert d["prompt_us"] == 0.58  # (193 + 3 · 100) / 850
    assert estimate(_program(cache_sequences=2))["kept_tokens_per_s"] == 8.5e6


def test_render() -> None:
    lines = render(estimate(_program())).splitlines()
    assert lines == [
        "decode: batch 1, one token per sequence per pass; caches of 1 sequence x 16 slots kept "
        "(4.0 KiB)",
        "per-token latency 193 cycles = 0.23 us (regions on the token's path + 3 hops); one pass "
        "alone 4,404,150 tokens/s",
        "full pipeline: one pass per 100 cycles = 8,500,000 tokens/s with 2 sequences in flight "
        "(2 passes), each with its own cache slots",
        "  the plan keeps fewer: with the 1 kept, 4,404,150 tokens/s",
        "a 4-token prompt streams through in 0.58 us",
    ]
    assert size_text(1000) == "1000 B" and size_text(3 * 2**30) == "3.0 GiB"
