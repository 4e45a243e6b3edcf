"""Placement on the fabric: exact rectangles, routes and colors, and the validator."""

from dataclasses import replace

import pytest

from cgc import driver
from cgc.backends.cerebras.partition import plan
from cgc.backends.cerebras.placement import Rect, check, conflicts, data_edges, place, validate
from cgc.backends.cerebras.planner import PlanError


@pytest.fixture(scope="module")
def tiny():
    loaded = driver.load_model("tiny-111m", seq_len=16)
    return driver.run_passes(driver.trace(loaded.module, loaded.example_inputs), "default")


@pytest.fixture(scope="module")
def placed(tiny):
    found = plan(tiny.copy(), "fabric:32x32")
    return found, place(found)


def test_tiny_model_on_a_32x32_fabric(placed) -> None:
    found, placement = placed
    assert len(found.regions) == 9
    # (x, y, rows, cols): bands of 7, 9, 10 and 6 rows; even bands west to east, odd ones back
    assert [(r.x, r.y, r.rows, r.cols) for r in placement.rects] == [
        (0, 0, 7, 26),
        (26, 0, 7, 6),
        (15, 7, 9, 17),
        (0, 7, 9, 15),
        (0, 16, 10, 13),
        (13, 16, 10, 4),
        (17, 16, 10, 15),
        (8, 26, 6, 24),
        (0, 26, 6, 8),
    ]
    assert sum(r.rows * r.cols for r in placement.rects) == 32 * 32
    assert validate(found, placement) == []


def test_consecutive_regions_share_an_edge(placed) -> None:
    _, placement = placed
    rects = placement.rects
    assert all(a.gap(b) == 1 for a, b in zip(rects, rects[1:], strict=False))


def test_every_data_edge_has_a_colored_route(placed) -> None:
    found, placement = placed
    routed = {
        (r.value, r.source, t): h
        for r in placement.routes
        for t, h in zip(r.targets, r.hops, strict=True)
    }
    edges = data_edges(found)
    assert len(edges) == len(placement.routes) == 12
    for (value, source), targets in edges.items():
        for t in targets:
            assert routed[(value, source, t)] == placement.rects[source].gap(placement.rects[t])
    # the residual of block 0 skips the MLP: region 1 -> region 3, 13 hops
    assert routed[("add_1", 1, 3)] == 13
    assert placement.colors == 2
    graph = conflicts(placement.routes)
    colors = {r.index: r.color for r in placement.routes}
    assert all(colors[a] != colors[b] for a, b in graph.edges)


def test_validator_reports_overlap_bounds_size_and_colors(placed) -> None:
    found, placement = placed
    rects = list(placement.rects)
    rects[1] = Rect(25, 0, 6, 7)  # one column into region 0
    rects[8] = Rect(-1, 26, 8, 6)  # off the west edge
    bad = replace(placement, rects=rects)
    assert validate(found, bad) == [
        "region 8 (linear) at (x=-1, y=26, 6x8) is outside the usable area",
        "regions 0 and 1 overlap at (x=25, y=0, 7x6) and (x=0, y=0, 7x26)",
    ]
    rects = list(placement.rects)
    rects[2] = Rect(15, 7, 17, 10)
    assert validate(found, replace(placement, rects=rects))[0] == (
        "region 2 (linear) is 10x17, the plan sized it 9x17"
    )
    routes = [replace(r, color=0) for r in placement.routes]
    problems = validate(found, replace(placement, routes=routes))
    assert problems and all("share a link and color 0" in p for p in problems)
    with pytest.raises(PlanError, match=r"^invalid wafer plan: regions 0 and 1 overlap"):
        rects = list(placement.rects)
        rects[1] = Rect(25, 0, 6, 7)
        check(found, replace(placement, rects=rects))


def test_validator_reports_unrouted_edges_and_too_many_colors(placed) -> None:
    found, placement = placed
    problems = validate(found, replace(placement, routes=placement.routes[1:]))
    assert problems == ["%add from region 0 to region 1 has no route"]
    many = [replace(r, color=30) for r in placement.routes]
    assert "routes need 31 colors, fabric:32x32 has 24" in validate(
        found, replace(placement, routes=many)
    )


def test_streaming_gives_every_region_the_whole_usable_area(tiny) -> None:
    found = plan(tiny.copy(), "fabric:32x32", mode="streaming")
    placement = place(found)
    assert set(placement.rects) == {Rect(0, 0, 32, 32)}
    assert placement.routes == []
    assert validate(found, placement) == []


def test_wse2_regions_are_inside_the_program_rectangle(tiny) -> None:
    found = plan(tiny.copy(), "wse2", mode="streaming")
    placement = place(found)
    assert set(placement.rects) == {Rect(4, 1, 750, 994)}  # memcpy keeps 7 columns, 2 rows
    assert validate(found, placement) == []
