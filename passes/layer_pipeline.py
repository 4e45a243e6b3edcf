"""layer-pipeline: size one wafer region per stage so that the layer pipeline is balanced.

Every stage (cgc.backends.cerebras.planner: a weight matrix's kernel plus the ops that run where
its output is) gets a PE rectangle; all rectangles are resident at once and activations stream
from region to region, so the pipeline's period is the slowest region's cycles T.

The regions form a floorplan of horizontal *bands* spanning the usable width, each band a row
of *columns*, each column one region or a stack of up to MAX_STACK consecutive regions. The
placer lays bands out as a boustrophedon (even bands west to east, odd bands east to west), so
consecutive regions share an edge. Sizing is a binary search on T:

- for a trial T, each region gets the narrowest rectangle of its band's height whose cycles are
  at most T and whose PEs hold it in SRAM, sides within ASPECT_LIMIT of each other (a stack's
  regions share a width and get the fewest rows each); a band gets the least height whose
  columns fit the usable width, and T is feasible when the bands fit the usable height;
- the least feasible T (within PERIOD_TOLERANCE) is the period; the rows and columns left over
  go to the slowest band, column or region, the fewest that make it faster, while any does;
- costs fall in steps (tile rounding, weight copies), so regions end up below T by different
  margins: rows and columns then move to the slowest from the neighbours that stay fastest
  without them, while that makes it faster and no donor as slow (bands are judged by their
  laid-out regions' cycles, not by the period their least widths fit).

The topology (which regions share a band or a stack) comes first, from each region's
square-rectangle area at the T where those areas fill the wafer: bands cut the pipeline order
into runs of equal area; columns group neighbours so that the fewest PEs are lost to the aspect
limit (a region too thin for its band is widened beyond its need). The CANDIDATES band counts
losing the least are sized in full and the one with the least period is kept.

Splitting: a lone linear (nothing joined its stage, as the vocabulary projection) whose area
exceeds the largest other region's is split along N into ⌈area / largest⌉ regions, each holding
a slice of the weight and receiving the same input.

A joint (training) graph gets a region per stage of both halves; a backward region also holds
the forward activations its kernels read and the fp32 master weights and optimizer state
(`optimizer` option, adamw or sgd) of the parameters whose gradients it completes
(cgc.backends.cerebras.train_pipeline), so models whose weights, gradients and optimizer state
fit in SRAM train pipelined.

Annotates every kernel node with `stage`, `region` ([rows, cols, pes] per part) and `slot`
([band, column, cell] per part), and free nodes with `stage`; a training region's kernels also
with `held` ([stash bytes, updated elements, optimizer]); the graph is otherwise unchanged.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, pairwise
from math import isqrt

from cgc.backends.cerebras.kernels.optimizer import update_rule
from cgc.backends.cerebras.machine import Machine, get_machine
from cgc.backends.cerebras.planner import (
    ASPECT_LIMIT,
    PlanError,
    RegionCost,
    Stage,
    group_stages,
    joint_loss,
)
from cgc.backends.cerebras.precision import check_precision
from cgc.backends.cerebras.train_pipeline import hold
from cgc.ir import Graph
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.registry import register_pass

MAX_STACK = 4
# Band counts whose estimated floorplans are sized in full (the best by final T wins).
CANDIDATES = 3
# Periods are searched to this relative precision: closer makes no visible difference.
PERIOD_TOLERANCE = 1e-3
# Sizes checked one by one below a bisection's answer (costs are not monotone in a side).
RUGGED_WINDOW = 8

Unit = tuple[int, int]  # (stage index, part)
Bands = list[list[list[int]]]  # band -> column -> units, top to bottom


@dataclass
class Floorplan:
    """Regions in bands and columns, with the sizes that balance the pipeline."""

    units: list[Unit]
    bands: Bands
    heights: list[int]  # rows of each band
    widths: list[list[int]]  # columns of each column, by band
    rows: list[list[list[int]]]  # rows of each cell, by band and column
    period: int  # the bottleneck region's cycles

    def shapes(self) -> dict[int, tuple[int, int, tuple[int, int, int]]]:
        """(rows, cols, (band, column, cell)) of every unit."""
        out = {}
        for b, band in enumerate(self.bands):
            for c, column in enumerate(band):
                for k, unit in enumerate(column):
                    out[unit] = (self.rows[b][c][k], self.widths[b][c], (b, c, k))
        return out


def _least(lo: int, hi: int, pred: Callable[[int], bool]) -> int | None:
    """Smallest x in [lo, hi] with pred(x), for a pred that is false then true."""
    if lo > hi or not pred(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _least_scan(lo: int, hi: int, pred: Callable[[int], bool]) -> int | None:
    """As `_least`, for a pred that may turn false again near hi (aspect lower bounds)."""
    top = hi
    while top >= lo and not pred(top):
        top = min(top - 1, top * 3 // 4)
    return None if top < lo else _least(lo, top, pred)


def _least_rugged(lo: int, hi: int, pred: Callable[[int], bool]) -> int | None:
    """As `_least_scan`, then a look just below the answer: costs jump with tile rounding and
    SRAM-bound weight replication, so a few rows less can fit where a bisection saw no fit."""
    found = _least_scan(lo, hi, pred)
    if found is None:
        return None
    best = found
    for x in range(found - 1, max(lo, found - RUGGED_WINDOW) - 1, -1):
        if pred(x):
            best = x
    return best


def _least_known(points: list[int], lo: int, hi: int, pred: Callable[[int], bool]) -> int | None:
    """As `_least`, narrowing [lo, hi] first with `points` already evaluated (kept sorted).

    The searches of successive trial periods probe the same rectangles again; a probe of a
    known point costs a dictionary look-up, a new one a kernel tiling.
    """

    def probe(x: int) -> bool:
        i = bisect_left(points, x)
        if i == len(points) or points[i] != x:
            points.insert(i, x)
        return pred(x)

    known = points[bisect_left(points, lo) : bisect_right(points, hi)]
    a, b = 0, len(known)
    while a < b:
        mid = (a + b) // 2
        if pred(known[mid]):
            b = mid
        else:
            a = mid + 1
    if a > 0:
        lo = known[a - 1] + 1
    if a < len(known):
        hi = known[a]
    return _least(lo, hi, probe)


def _least_period(hi: int, pred: Callable[[int], bool]) -> int | None:
    """A period within PERIOD_TOLERANCE of the least one with pred, given pred(hi) is true
    (or None if it is not): shrink geometrically to an infeasible one, then bisect."""
    if not pred(hi):
        return None
    lo = hi
    while lo > 1:
        lo = lo * 4 // 5
        if not pred(lo):
            break
        hi = lo
    else:
        return hi
    while hi - lo > max(1, int(hi * PERIOD_TOLERANCE)):
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _balance(
    sizes: list[int],
    times: list[int],
    spare: int,
    limit: Callable[[int], int],
    time_at: Callable[[int, int], int | None],
) -> None:
    """Give the spare rows or columns to the slowest items (`_spread`), then trade margins
    between items (`_rebalance`). Updates `sizes` and `times`."""
    _spread(sizes, times, spare, limit, time_at)
    _rebalance(sizes, times, limit, time_at)


def _spread(
    sizes: list[int],
    times: list[int],
    spare: int,
    limit: Callable[[int], int],
    time_at: Callable[[int, int], int | None],
) -> None:
    """Give `spare` rows or columns to the slowest item, each time the fewest that make it
    faster (`time_at(item, size)`, None when it does not fit; sizes capped by `limit(item)`),
    until the slowest cannot get faster. Updates `sizes` and `times`."""
    while spare > 0:
        j = times.index(max(times))
        room = min(spare, limit(j) - sizes[j])
        faster = partial(_faster, time_at, j, sizes[j], times[j])
        near = range(1, min(room, RUGGED_WINDOW) + 1)
        extra = next((d for d in near if faster(d)), None) or _least(1, room, faster)
        if extra is None:
            return
        sizes[j] += extra
        times[j] = time_at(j, sizes[j])
        spare -= extra


def _rebalance(
    sizes: list[int],
    times: list[int],
    limit: Callable[[int], int],
    time_at: Callable[[int, int], int | None],
) -> None:
    """Move rows or columns to the slowest item from the items that stay fastest without them,
    while that makes the slowest faster and leaves every donor faster than it was. Cost steps
    leave items below the period by different margins; trading the margins lowers it.
    Updates `sizes` and `times`."""
    while len(sizes) > 1:
        j = times.index(max(times))
        t = times[j]
        room = min(limit(j) - sizes[j], RUGGED_WINDOW)
        need = next((d for d in range(1, room + 1) if _faster(time_at, j, sizes[j], t, d)), None)
        if need is None:
            return
        trial = list(sizes)
        for _ in range(need):
            after = [
                (time_at(i, trial[i] - 1), i) for i in range(len(trial)) if i != j and trial[i] > 1
            ]
            donors = [(ti, i) for ti, i in after if ti is not None and ti < t]
            if not donors:
                return
            trial[min(donors)[1]] -= 1
        trial[j] += need
        for i, size in enumerate(trial):
            if size != sizes[i]:
                sizes[i], times[i] = size, time_at(i, size)


def _faster(
    time_at: Callable[[int, int], int | None], item: int, size: int, t: int, d: int
) -> bool:
    """Whether `d` more rows or columns make the item faster than `t`."""
    new = time_at(item, size + d)
    return new is not None and new < t


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class Sizer:
    """Least rectangles for a trial period, per region, column, band and floorplan."""

    def __init__(self, costs: list[RegionCost], machine: Machine) -> None:
        self.costs = costs
        self.width = machine.usable_width
        self.height = machine.usable_height
        self.budget = machine.sram_usable_bytes
        self._memo: dict[tuple, int | None] = {}
        self._points: dict[tuple, list[int]] = {}
        self._bands: dict[tuple, list[tuple[int, int | None]]] = {}

    def ok(self, unit: int, rows: int, cols: int, period: int | None) -> bool:
        """Whether the unit fits in SRAM and, for a period, runs within it."""
        cycles, sram = self.costs[unit](rows, cols)
        return sram <= self.budget and (period is None or cycles <= period)

    def min_cols(self, unit: int, rows: int, period: int | None) -> int | None:
        """Fewest columns of a `rows`-high rectangle for the unit."""
        key = ("cols", self.costs[unit].id, rows, period)
        if key not in self._memo:
            lo, hi = _ceil(rows, ASPECT_LIMIT), min(self.width, rows * ASPECT_LIMIT)
            points = self._points.setdefault(key[:3], [])
            self._memo[key] = _least_known(points, lo, hi, lambda c: self.ok(unit, rows, c, period))
        return self._memo[key]

    def min_rows(self, unit: int, cols: int, period: int | None) -> int | None:
        """Fewest rows of a `cols`-wide rectangle for the unit."""
        key = ("rows", self.costs[unit].id, cols, period)
        if key not in self._memo:
            lo, hi = _ceil(cols, ASPECT_LIMIT), min(self.height, cols * ASPECT_LIMIT)
            points = self._points.setdefault(key[:3], [])
            self._memo[key] = _least_known(points, lo, hi, lambda r: self.ok(unit, r, cols, period))
        return self._memo[key]

    def stack_rows(self, column: list[int], width: int, period: int | None) -> list[int] | None:
        """Fewest rows of each stacked unit at `width` columns."""
        rows = [self.min_rows(u, width, period) for u in column]
        return None if None in rows else rows

    def column_width(self, column: list[int], height: int, period: int | None) -> int | None:
        """Fewest columns of a column `height` rows high."""
        if len(column) == 1:
            return self.min_cols(column[0], height, period)

        def fits(w: int) -> bool:
            rows = self.stack_rows(column, w, period)
            return rows is not None and sum(rows) <= height

        return _least_scan(1, min(self.width, height * ASPECT_LIMIT), fits)

    def band_fits(self, band: list[list[int]], height: int, period: int | None) -> bool:
        """Whether the band's columns fit the usable width at this height and period."""
        total = 0
        for column in band:
            w = self.column_width(column, height, period)
            if w is None:
                return False
            total += w
            if total > self.width:
                return False
        return True

    def band_height(self, band: list[list[int]], period: int | None) -> int | None:
        """Least height of a band for the period.

        A band needs no more rows at a longer period, so heights found for neighbouring
        periods bracket the search (the period search probes ever closer periods).
        """
        key = tuple(tuple(self.costs[u].id for u in column) for column in band)
        memo = ("band", key, period)
        if memo in self._memo:
            return self._memo[memo]
        lo, hi = 1, min(self.height, max(1, ASPECT_LIMIT * self.width // len(band)))
        known = self._bands.setdefault(key, [])  # (period, height) sorted by period
        if period is not None:
            i = bisect_left(known, (period,))
            if i < len(known) and known[i][1] is not None:
                lo = known[i][1]
            if i > 0 and known[i - 1][1] is not None:
                hi = min(hi, known[i - 1][1])
        found = _least_rugged(lo, hi, lambda h: self.band_fits(band, h, period))
        if period is not None:
            insort(known, (period, found))
        self._memo[memo] = found
        return found

    def heights(self, bands: Bands, period: int | None) -> list[int] | None:
        """Least band heights for the period, or None when they exceed the usable height."""
        out, total = [], 0
        for band in bands:
            h = self.band_height(band, period)
            if h is None or total + h > self.height:
                return None
            out.append(h)
            total += h
        return out

    def column_time(self, column: list[int], height: int, width: int, hi: int) -> int | None:
        """Cycles of the slowest unit of a column of this size (a stack's cells balanced)."""
        if len(column) == 1:
            return self.cell_time(column[0], height, width)

        def fits(t: int) -> bool:
            rows = self.stack_rows(column, width, t)
            return rows is not None and sum(rows) <= height

        return _least_period(hi, fits)

    def band_time(self, band: list[list[int]], height: int, hi: int) -> int | None:
        """Least period (within PERIOD_TOLERANCE) at which the band fits at this height."""
        return _least_period(hi, lambda t: self.band_fits(band, height, t))

    def period(self, bands: Bands, estimate: int) -> int | None:
        """The least period (within PERIOD_TOLERANCE) at which the bands fit, or None.

        The search starts from the estimate and widens geometrically, so it never probes the
        absurd rectangles of periods far from the answer.
        """
        hi = max(1, estimate)
        while self.heights(bands, hi) is None:
            if hi > 16 * estimate:  # beyond any estimate error: maybe nothing fits at all
                base = self.heights(bands, None)
                if base is None:
                    return None
                return _least_period(self._slowest(bands, base), self._fits(bands))
            hi = hi * 5 // 4 + 1
        return _least_period(hi, self._fits(bands))

    def _fits(self, bands: Bands) -> Callable[[int], bool]:
        return lambda t: self.heights(bands, t) is not None

    def _slowest(self, bands: Bands, heights: list[int]) -> int:
        """Cycles of the slowest unit when every band has the given height, SRAM-sized."""
        slowest = 1
        for band, h in zip(bands, heights, strict=True):
            for column in band:
                w = self.column_width(column, h, None)
                cells = [h] if len(column) == 1 else self.stack_rows(column, w, None)
                for unit, r in zip(column, cells, strict=True):
                    slowest = max(slowest, self.costs[unit](r, w)[0])
        return slowest

    def floorplan(self, units: list[Unit], bands: Bands, estimate: int) -> Floorplan | None:
        """Balanced sizes for a topology: least heights at the period, then spare rows to the
        slowest band and rows traded between bands by their laid-out times."""
        period = self.period(bands, estimate)
        if period is None:
            return None
        heights = self.heights(bands, period)
        layout = partial(self._band_layout_time, bands, period)
        times = [layout(b, h) for b, h in enumerate(heights)]
        _balance(heights, times, self.height - sum(heights), lambda b: self.height, layout)
        widths, rows = [], []
        for band, h in zip(bands, heights, strict=True):
            w, cells, _ = self.band_layout(band, h, period)
            widths.append(w)
            rows.append(cells)
        return Floorplan(units, bands, heights, widths, rows, max(times))

    def band_layout(
        self, band: list[list[int]], height: int, period: int
    ) -> tuple[list[int], list[list[int]], int] | None:
        """Widths of the band's columns and rows of their cells at this height (least widths
        for the band's time, spare columns to the slowest, columns traded), and the slowest
        cell's cycles; None when the band does not fit within the period."""
        key = ("layout", tuple(tuple(self.costs[u].id for u in c) for c in band), height, period)
        if key not in self._memo:
            self._memo[key] = None
            t = self.band_time(band, height, 2 * period)  # the layout may end up faster
            if t is not None:
                w = [self.column_width(column, height, t) for column in band]
                time_at = partial(self._column_layout_time, band, height, t)
                times = [time_at(j, wj) for j, wj in enumerate(w)]
                limit = partial(lambda h, j: h * ASPECT_LIMIT, height)
                _balance(w, times, self.width - sum(w), limit, time_at)
                cells = [
                    self.column_layout(c, height, wc, t)[0] for c, wc in zip(band, w, strict=True)
                ]
                self._memo[key] = (w, cells, max(times))
        return self._memo[key]

    def _band_layout_time(self, bands: Bands, period: int, b: int, height: int) -> int | None:
        layout = self.band_layout(bands[b], height, period)
        return None if layout is None else layout[2]

    def column_layout(
        self, column: list[int], height: int, width: int, hi: int
    ) -> tuple[list[int], int] | None:
        """Rows of a column's cells (balanced, spare rows to the slowest, rows traded) and the
        slowest cell's cycles; None when the column does not fit."""
        if len(column) == 1:
            t = self.cell_time(column[0], height, width)
            return None if t is None else ([height], t)
        key = ("cells", tuple(self.costs[u].id for u in column), height, width, hi)
        if key not in self._memo:
            self._memo[key] = None
            t = self.column_time(column, height, width, hi)
            rows = None if t is None else self.stack_rows(column, width, t)
            if rows is not None:
                time_at = partial(lambda k, r: self.cell_time(column[k], r, width))
                times = [time_at(k, r) for k, r in enumerate(rows)]
                limit = partial(lambda width, k: width * ASPECT_LIMIT, width)
                _balance(rows, times, height - sum(rows), limit, time_at)
                self._memo[key] = (rows, max(times))
        return self._memo[key]

    def _column_layout_time(
        self, band: list[list[int]], height: int, hi: int, j: int, width: int
    ) -> int | None:
        layout = self.column_layout(band[j], height, width, hi)
        return None if layout is None else layout[1]

    def cell_time(self, unit: int, rows: int, cols: int) -> int | None:
        """Cycles of the unit on a rows x cols rectangle; None when it does not fit in SRAM or
        is thinner than ASPECT_LIMIT allows."""
        if max(rows, cols) > ASPECT_LIMIT * min(rows, cols) or not self.ok(unit, rows, cols, None):
            return None
        return self.costs[unit](rows, cols)[0]

    # -- the topology estimate -----------------------------------------------------------------

    def square_area(self, unit: int, period: int | None) -> int | None:
        """PEs of the least square that runs the unit within the period."""
        points = self._points.setdefault(("square", self.costs[unit].id), [])
        side = _least_known(
            points, 1, min(self.width, self.height), lambda s: self.ok(unit, s, s, period)
        )
        return None if side is None else side * side

    def filling_areas(self) -> tuple[list[int], int] | None:
        """Square areas at the least period whose squares fit in the usable PEs, and that
        period; None when even the SRAM-sized squares do not fit."""
        total = self.width * self.height
        base = [self.square_area(u, None) for u in range(len(self.costs))]
        if None in base or sum(base) > total:
            return None
        hi = max(self.costs[u](s, s)[0] for u, s in enumerate(isqrt(a) for a in base))

        found: dict[int, list[int]] = {}

        def fits(t: int) -> bool:
            areas = [self.square_area(u, t) for u in range(len(self.costs))]
            if None in areas or sum(areas) > total:
                return False
            found[t] = areas
            return True

        # The areas a period was found with, not a new search: a unit whose cycles do not
        # fall with its size (one decode token: hops grow as compute shrinks) may be answered
        # differently once the searches have probed other sizes.
        period = _least_period(hi, fits)
        return None if period is None else (found[period], period)


def _waste(widths: float, heights: list[float]) -> float:
    """PEs a column of cells loses to the aspect limit: a cell too thin is widened (or made
    taller) to ASPECT_LIMIT:1; one too long cannot be placed at all."""
    waste = 0.0
    for h in heights:
        long, short = max(widths, h), min(widths, h)
        if long > ASPECT_LIMIT * short:
            if short == h:  # a flat cell would need rows the band does not have
                return float("inf")
            waste += long * long / ASPECT_LIMIT - long * short
    return waste


def _columns(areas: list[float], width: int) -> tuple[tuple[float, int], list[list[int]]]:
    """Group one band's regions into columns: least PEs lost to the aspect limit (estimated),
    then fewest stacks."""
    height = sum(areas) / width
    n = len(areas)
    best: list[tuple[tuple[float, int], list[list[int]]] | None] = [((0.0, 0), [])] + [None] * n
    for i in range(1, n + 1):
        for size in range(1, min(MAX_STACK, i) + 1):
            group = areas[i - size : i]
            w = sum(group) / height
            (prev, stacks), cols = best[i - size]
            score = (prev + _waste(w, [a / w for a in group]), stacks + (size > 1))
            if best[i] is None or score < best[i][0]:
                best[i] = (score, [*cols, list(range(i - size, i))])
    return best[n]


def topologies(areas: list[int], width: int, height: int) -> list[Bands]:
    """The most promising band/column groupings of regions with these estimated areas."""
    scale = width * height / sum(areas)
    scaled = [a * scale for a in areas]
    total = sum(scaled)
    prefix = list(accumulate(scaled))
    scored = []
    for count in range(1, len(areas) + 1):
        cuts = [0]
        for k in range(1, count):
            target = total * k / count
            j = bisect_left(prefix, target)  # cut after unit j, or after j - 1 if nearer
            if j > 0 and target - prefix[j - 1] < prefix[j] - target:
                j -= 1
            cuts.append(max(j + 1, cuts[-1] + 1))
        cuts.append(len(scaled))
        if any(b >= e for b, e in pairwise(cuts)):
            continue
        waste, stacks, bands = 0.0, 0, []
        for lo, hi in pairwise(cuts):
            (band_waste, band_stacks), cols = _columns(scaled[lo:hi], width)
            waste, stacks = waste + band_waste, stacks + band_stacks
            bands.append([[lo + u for u in col] for col in cols])
        scored.append(((round(waste / total, 3), stacks, count), bands))
    scored.sort(key=lambda item: item[0])
    return [bands for _, bands in scored[:CANDIDATES]]


def plan_pipeline(stages: list[Stage], machine: Machine, precision: str) -> Floorplan:
    """Split, group and size the stages' regions (sets `stage.parts`); PlanError if none fits."""
    for stage in stages:
        stage.parts = 1
    sizer = _sizer(stages, machine, precision)
    filling = sizer.filling_areas()
    if filling is None:
        raise PlanError(_no_fit(stages, sizer, machine))
    areas, estimate = filling
    whole = [a for s, a in zip(stages, areas, strict=True) if not s.splittable]
    for stage, a in zip(stages, areas, strict=True):
        if whole and stage.splittable and a > max(whole):
            stage.parts = min(stage.out_features, -(-a // max(whole)))
    if any(s.parts > 1 for s in stages):
        split = _sizer(stages, machine, precision)
        split_filling = split.filling_areas()
        if split_filling is None:  # parts never need more SRAM; kept whole to be safe
            for stage in stages:
                stage.parts = 1
        else:
            sizer, (areas, estimate) = split, split_filling
    units = [(s.index, p) for s in stages for p in range(s.parts)]
    best = None
    for bands in topologies(areas, machine.usable_width, machine.usable_height):
        plan = sizer.floorplan(units, bands, estimate)
        if plan is not None and (best is None or plan.period < best.period):
            best = plan
    if best is None:
        used = sum(a for a in (sizer.square_area(u, None) for u in range(len(units))) if a)
        raise PlanError(
            f"pipelined: the {len(units)} regions' SRAM needs ({used:,} PEs, "
            f"{used / machine.usable_pes:.0%} of {machine.name}'s usable area) do not pack into "
            f"bands of regions at most {ASPECT_LIMIT}:1"
        )
    return best


def _sizer(stages: list[Stage], machine: Machine, precision: str) -> Sizer:
    costs = [RegionCost(s, p, machine, precision) for s in stages for p in range(s.parts)]
    return Sizer(costs, machine)


def _no_fit(stages: list[Stage], sizer: Sizer, machine: Machine) -> str:
    """What keeps the stages off the wafer: one stage too big, or all of them together."""
    rows, cols = machine.usable_height, machine.usable_width
    for u, stage in enumerate(stages):
        kernels = sizer.costs[u].kernels(rows, cols)
        need = sum(k.sram_bytes(rows, cols) for k in kernels)
        if need > machine.sram_usable_bytes or sizer.square_area(u, None) is None:
            node, kernel = max(
                zip(stage.nodes, kernels, strict=True), key=lambda nk: nk[1].sram_bytes(rows, cols)
            )
            return (
                f"pipelined: stage {stage.index} needs {need:,} bytes per PE on all "
                f"{machine.usable_pes:,} PEs of {machine.name} (most for {node.op} "
                f"%{node.outputs[0].name}: {kernel.sram_bytes(rows, cols):,}); a PE has "
                f"{machine.sram_usable_bytes:,}"
            )
    need = sum(sizer.square_area(u, None) for u in range(len(stages)))
    return (
        f"pipelined: the weights and buffers of all {len(stages)} stages need {need:,} PEs, "
        f"{machine.name} has {machine.usable_pes:,} usable"
    )


def annotate(graph: Graph, stages: list[Stage], free: dict[str, int], plan: Floorplan) -> None:
    """Write stage, region and slot annotations (replacing any earlier partitioning)."""
    clear(graph)
    shapes = plan.shapes()
    index = {unit: i for i, unit in enumerate(plan.units)}
    for stage in stages:
        parts = [shapes[index[(stage.index, p)]] for p in range(stage.parts)]
        region = [[rows, cols, rows * cols] for rows, cols, _ in parts]
        slot = [list(s) for _, _, s in parts]
        held = [stage.stash_bytes, stage.update_elements, stage.optimizer]
        for node in stage.nodes:
            node.meta.update(stage=stage.index, region=region, slot=slot)
            if stage.stash_bytes or stage.update_elements:
                node.meta["held"] = held
    _annotate_free(graph, free)


def clear(graph: Graph) -> None:
    """Remove the annotations of earlier partitioning passes."""
    for node in graph.nodes:
        for key in ("stage", "region", "slot", "step", "recompute", "held"):
            node.meta.pop(key, None)


def _annotate_free(graph: Graph, free: dict[str, int]) -> None:
    for node in graph.nodes:
        stage = free.get(node.outputs[0].name)
        if stage is not None:
            node.meta["stage"] = stage


class WaferPass(Pass):
    """A partitioning pass for one wafer: the options and the stage grouping both modes share.

    Options: target (wse2, wse3 or fabric:WxH) and precision (fp32, fp16, bf16, cb16).
    """

    target: str = "wse2"
    precision: str = "fp32"

    def stages(self, graph: Graph) -> tuple[Machine, list[Stage], dict[str, int]]:
        """The target machine, the graph's stages, and the stage each free op rides with."""
        machine = get_machine(self.target)
        check_precision(self.precision)
        return (machine, *group_stages(graph, machine, self.precision))


@register_pass
class LayerPipeline(WaferPass):
    """Give every stage a wafer region sized to balance the layer pipeline (annotates only)."""

    name = "layer-pipeline"
    optimizer: str = "adamw"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        machine, stages, free = self.stages(graph)
        if joint_loss(graph) is not None:
            update_rule(self.optimizer)
            hold(graph, stages, free, self.precision)
            for stage in stages:
                stage.optimizer = self.optimizer
        plan = plan_pipeline(stages, machine, self.precision)
        annotate(graph, stages, free, plan)
        shapes = plan.shapes().values()
        return PassResult(
            True,
            {
                "stages": len(stages),
                "regions": len(plan.units),
                "bands": len(plan.bands),
                "pes": sum(r * c for r, c, _ in shapes),
                "period_cycles": plan.period,
            },
        )
