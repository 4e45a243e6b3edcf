"""Placement: rectangles on the fabric, activation routes with hops and colors, and a validator.

Layer-pipelined plans are laid out from their floorplan slots: bands stack north to south from
the usable area's north-west corner; even bands run west to east, odd bands east to west (a
boustrophedon), so the last region of a band sits above the first of the next. A column's
stacked regions run north to south or south to north; the improvement step flips stacks (and
the whole layout east-west) while that shortens the routes, weighted by the words they carry.
Weight-streaming plans give every region the whole usable rectangle: regions run one at a
time.

Routes. Each value a region consumes from another region travels on one route (a multicast
when several regions consume it, as the parts of a split projection do). A route leaves its
source at the point nearest each target, goes along the row, then along the column (XY
routing), so its hops are the Manhattan gap between the rectangles (1 between neighbours).
This is the route of the stream's head; the stream's width crosses in parallel on the links
beside it. Two routes that share a directed link need different colors; colors are assigned by
greedy coloring of that conflict graph (networkx), so routes that never meet share colors.
Graph inputs, outputs and weights move through the host's memcpy and are not routes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import networkx as nx

from cgc.backends.cerebras.planner import ASPECT_LIMIT, Plan, PlanError, Region
from cgc.ir import Node, Value

Point = tuple[int, int]


@dataclass(frozen=True)
class Rect:
    """A PE rectangle on the fabric: west column x, north row y, and its size."""

    x: int
    y: int
    cols: int
    rows: int

    @property
    def x1(self) -> int:
        return self.x + self.cols

    @property
    def y1(self) -> int:
        return self.y + self.rows

    def overlaps(self, other: Rect) -> bool:
        """Whether the two share a PE."""
        return self.x < other.x1 and other.x < self.x1 and self.y < other.y1 and other.y < self.y1

    def gap(self, other: Rect) -> int:
        """Hops between the nearest PEs of the two rectangles (0 when they overlap)."""
        dx = max(0, other.x - (self.x1 - 1), self.x - (other.x1 - 1))
        dy = max(0, other.y - (self.y1 - 1), self.y - (other.y1 - 1))
        return dx + dy

    def nearest(self, other: Rect) -> Point:
        """The PE of this rectangle nearest to `other` (the middle of a shared span)."""
        return (
            _near(self.x, self.x1, other.x, other.x1),
            _near(self.y, self.y1, other.y, other.y1),
        )


def _near(a0: int, a1: int, b0: int, b1: int) -> int:
    lo, hi = max(a0, b0), min(a1, b1)
    if lo < hi:
        return (lo + hi - 1) // 2
    return a1 - 1 if b0 >= a1 else a0


@dataclass
class Route:
    """One activation stream from a source region to one or more target regions."""

    index: int
    value: str  # the value as the targets consume it
    source: int  # region index
    targets: list[int]
    words: int  # 32-bit wavelets per pass (the weight of the improvement step)
    legs: list[list[Point]] = field(default_factory=list)  # corner points, one leg per target
    hops: list[int] = field(default_factory=list)
    color: int = -1

    def links(self) -> set[tuple[int, int, int, int]]:
        """Directed links (from x, y, to x, y) of all legs."""
        out = set()
        for leg in self.legs:
            for (x0, y0), (x1, y1) in zip(leg, leg[1:], strict=False):
                sx, sy = (x1 > x0) - (x1 < x0), (y1 > y0) - (y1 < y0)
                x, y = x0, y0
                while (x, y) != (x1, y1):
                    out.add((x, y, x + sx, y + sy))
                    x, y = x + sx, y + sy
        return out


@dataclass
class Placement:
    """Where every region is and how activations move between them."""

    rects: list[Rect]  # by region index
    routes: list[Route]

    @property
    def colors(self) -> int:
        """Colors the routes use."""
        return 1 + max((r.color for r in self.routes), default=-1)


def data_edges(plan: Plan) -> dict[tuple[str, int], set[int]]:
    """(value consumed, source region) -> target regions, for every value crossing regions."""
    producer_regions: dict[int, list[int]] = defaultdict(list)
    for region in plan.regions:
        producer_regions[region.stage.index].append(region.index)
    stage_of = {id(n): s.index for s in plan.stages for n in s.nodes}
    edges: dict[tuple[str, int], set[int]] = defaultdict(set)
    for region in plan.regions:
        for node in region.stage.nodes:
            for value in node.inputs:
                for source in _sources(value, stage_of, plan, producer_regions):
                    if source != region.index:
                        edges[(value.name, source)].add(region.index)
    return edges


def _sources(
    value: Value, stage_of: dict[int, int], plan: Plan, producer_regions: dict[int, list[int]]
) -> Iterator[int]:
    """Regions whose kernels produce the data of `value` (through free ops)."""
    node: Node | None = value.producer
    if node is None:
        return
    if id(node) in stage_of:
        yield from producer_regions[stage_of[id(node)]]
        return
    for v in node.inputs:
        yield from _sources(v, stage_of, plan, producer_regions)


def place(plan: Plan) -> Placement:
    """Rectangles for the plan's regions and routes between them, colors assigned."""
    m = plan.machine
    if plan.mode == "streaming":
        whole = Rect(m.usable_x, m.usable_y, m.usable_width, m.usable_height)
        return Placement([whole] * len(plan.regions), [])
    flips: dict[tuple[int, int], bool] = {}
    mirror = False
    routes = _routes(plan)
    best = _layout(plan, flips, mirror)
    best_cost = _route_cost(routes, best)
    stacks = sorted({r.slot[:2] for r in plan.regions if r.slot[2] > 0})
    improved = True
    while improved:
        improved = False
        for key in [None, *stacks]:
            trial_flips, trial_mirror = dict(flips), mirror
            if key is None:
                trial_mirror = not mirror
            else:
                trial_flips[key] = not flips.get(key, False)
            rects = _layout(plan, trial_flips, trial_mirror)
            cost = _route_cost(routes, rects)
            if cost < best_cost:
                best, best_cost, flips, mirror, improved = (
                    rects,
                    cost,
                    trial_flips,
                    trial_mirror,
                    True,
                )
    _trace(routes, best)
    _color(routes)
    return Placement(best, routes)


def _layout(plan: Plan, flips: dict[tuple[int, int], bool], mirror: bool) -> list[Rect]:
    """Rectangles from floorplan slots: boustrophedon bands, stacks top-down unless flipped."""
    m = plan.machine
    bands: dict[int, dict[int, list[Region]]] = defaultdict(lambda: defaultdict(list))
    for region in plan.regions:
        band, column, _ = region.slot
        bands[band][column].append(region)
    rects: list[Rect | None] = [None] * len(plan.regions)
    y = m.usable_y
    for band in sorted(bands):
        columns = bands[band]
        height = max(sum(r.rows for r in cells) for cells in columns.values())
        east = (band % 2 == 1) != mirror
        x = m.usable_x + m.usable_width if east else m.usable_x
        for column in sorted(columns):
            cells = sorted(columns[column], key=lambda r: r.slot[2])
            width = cells[0].cols
            if east:
                x -= width
            ys = y + height - sum(r.rows for r in cells) if flips.get((band, column)) else y
            order = reversed(cells) if flips.get((band, column)) else cells
            for region in order:
                rects[region.index] = Rect(x, ys, width, region.rows)
                ys += region.rows
            if not east:
                x += width
        y += height
    return rects


def _routes(plan: Plan) -> list[Route]:
    routes = []
    for (value, source), targets in sorted(data_edges(plan).items(), key=_edge_order):
        words = _words(plan, value)
        routes.append(Route(len(routes), value, source, sorted(targets), words))
    return routes


def _edge_order(item: tuple[tuple[str, int], set[int]]) -> tuple[int, int, str]:
    (value, source), targets = item
    return (source, min(targets), value)


def _words(plan: Plan, name: str) -> int:
    """32-bit wavelets a value takes on the fabric in the plan's precision."""
    for node in plan.graph.nodes:
        for v in node.outputs:
            if v.name == name:
                t = v.type
                bytes_per = 2 if t.is_float and plan.precision != "fp32" else 4
                return -(-t.numel * bytes_per // 4)
    return 0


def _route_cost(routes: list[Route], rects: list[Rect]) -> int:
    return sum(r.words * sum(rects[r.source].gap(rects[t]) for t in r.targets) for r in routes)


def _trace(routes: list[Route], rects: list[Rect]) -> None:
    """XY legs and hop counts of every route."""
    for route in routes:
        source = rects[route.source]
        route.legs, route.hops = [], []
        for t in route.targets:
            target = rects[t]
            (sx, sy), (tx, ty) = source.nearest(target), target.nearest(source)
            leg = [(sx, sy)]
            if tx != sx:
                leg.append((tx, sy))
            if ty != sy:
                leg.append((tx, ty))
            route.legs.append(leg)
            route.hops.append(abs(tx - sx) + abs(ty - sy))


def conflicts(routes: list[Route]) -> nx.Graph:
    """Routes as nodes, an edge between two routes that share a directed link."""
    graph = nx.Graph()
    graph.add_nodes_from(r.index for r in routes)
    users: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
    for route in routes:
        for link in route.links():
            users[link].append(route.index)
    for on_link in users.values():
        for i, a in enumerate(on_link):
            for b in on_link[i + 1 :]:
                graph.add_edge(a, b)
    return graph


def _color(routes: list[Route]) -> None:
    colors = nx.greedy_color(conflicts(routes), strategy="largest_first")
    for route in routes:
        route.color = colors[route.index]


def validate(plan: Plan, placement: Placement) -> list[str]:
    """Every problem of a placed plan: bounds, overlaps, shape, SRAM, colors, unrouted edges."""
    m = plan.machine
    problems = []
    rects = placement.rects
    if len(rects) != len(plan.regions):
        return [f"{len(rects)} rectangles for {len(plan.regions)} regions"]
    for region, rect in zip(plan.regions, rects, strict=True):
        name = f"region {region.index} ({region.stage.nodes[0].op})"
        inside = (
            m.usable_x <= rect.x
            and rect.x1 <= m.usable_x + m.usable_width
            and m.usable_y <= rect.y
            and rect.y1 <= m.usable_y + m.usable_height
        )
        if not inside or rect.cols < 1 or rect.rows < 1:
            problems.append(f"{name} at {_show(rect)} is outside the usable area")
        if (rect.rows, rect.cols) != (region.rows, region.cols):
            problems.append(
                f"{name} is {rect.rows}x{rect.cols}, the plan sized it {region.rows}x{region.cols}"
            )
        if plan.mode == "pipelined" and max(rect.rows, rect.cols) > ASPECT_LIMIT * min(
            rect.rows, rect.cols
        ):
            problems.append(f"{name} {rect.rows}x{rect.cols} is longer than {ASPECT_LIMIT}:1")
        if region.sram_bytes > m.sram_usable_bytes:
            problems.append(
                f"{name} needs {region.sram_bytes:,} bytes per PE, {m.sram_usable_bytes:,} usable"
            )
    if plan.mode == "pipelined":
        problems += _overlaps(rects)
    if placement.colors > m.colors:
        problems.append(f"routes need {placement.colors} colors, {m.name} has {m.colors}")
    graph = conflicts(placement.routes)
    by_index = {r.index: r for r in placement.routes}
    for a, b in graph.edges:
        if by_index[a].color == by_index[b].color:
            problems.append(f"routes {a} and {b} share a link and color {by_index[a].color}")
    if plan.mode == "pipelined":
        routed = {(r.value, r.source, t) for r in placement.routes for t in r.targets}
        for (value, source), targets in data_edges(plan).items():
            for target in sorted(targets):
                if (value, source, target) not in routed:
                    problems.append(
                        f"%{value} from region {source} to region {target} has no route"
                    )
    return problems


def _overlaps(rects: list[Rect]) -> list[str]:
    """Pairs of overlapping rectangles, by a sweep over their west edges."""
    order = sorted(range(len(rects)), key=lambda i: rects[i].x)
    problems, active = [], []
    for i in order:
        active = [j for j in active if rects[j].x1 > rects[i].x]
        for j in active:
            if rects[i].overlaps(rects[j]):
                a, b = sorted((i, j))
                problems.append(
                    f"regions {a} and {b} overlap at {_show(rects[i])} and {_show(rects[j])}"
                )
        active.append(i)
    return problems


def _show(rect: Rect) -> str:
    return f"(x={rect.x}, y={rect.y}, {rect.rows}x{rect.cols})"


def check(plan: Plan, placement: Placement) -> None:
    """Raise a PlanError listing the placement's problems, if it has any."""
    problems = validate(plan, placement)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise PlanError(f"invalid wafer plan: {'; '.join(problems[:3])}{more}")
