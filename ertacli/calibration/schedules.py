"""Cached-step sets of the schedule families `auto` tries at an exact cached count (no threshold search).

Every set keeps step 0 computed; the final step T-1 is a plan's choice (SPEC "Residual cache"): a family with a
computed tail of 0 may cache it. `tail` counts the steps at the end of the run that are always computed, T-1
included (TaylorSeer's meaning: 0 = none). Counts are exact: a total over branches is split as evenly as it goes
(the first branches take one more when it does not divide), and every branch takes the first n_b steps of one
fill order, so the branches' sets are nested (the same set where the counts are equal).

- `even(first=b, tail=t)`: the uniform cache's evenly spaced computed steps (`uniform_cached_steps`) inside
  the window from step b-1 to step T-t, every step outside it computed (a fractional interval: at T/2 an
  alternating schedule with one double run); `first=1, tail=1` is the plain uniform cache. With tail 0 the
  window ends at T, the end of the run (s_T = 0, no call), so T-1 may be cached.
- `interval(i, first=b, tail=t)`: from step b on, runs of i-1 cached steps each followed by one computed step (a
  TaylorSeer / FirstBlockCache-style interval schedule) until the count is reached, never into the last t steps;
  every step after the last cached one is computed (the computed tail falls out).
- `interval(i, tail=t)`: the mirror image, anchored at the end: the last t steps are computed, then runs of i-1
  cached steps each preceded by one computed step, walking back until the count is reached (the first cached
  step falls out).

A family is infeasible (None) when its pattern cannot fit the count between steps 1 and T-1.
"""

from __future__ import annotations


def branch_counts(branches: list[str], total: int) -> dict[str, int]:
    """`total` cached calls split over branches: equal shares, the first `total % B` branches one more."""
    q, r = divmod(int(total), len(branches))
    return {b: q + (1 if j < r else 0) for j, b in enumerate(branches)}


def interval_order(T: int, i: int, first: int | None = None, tail: int | None = None) -> list[int]:
    """Every step the interval pattern would cache, in fill order: from `first` forward (before the last `tail`
    steps, default 0), or, without `first`, from the computed tail back."""
    if i < 2:
        raise ValueError(f"an interval schedule needs i >= 2 (one computed step every i), got {i}")
    if first is None and tail is None:
        raise ValueError("anchor an interval schedule at first= or at tail=")
    if first is not None:
        return [k for k in range(max(1, first), T - (tail or 0)) if (k - first) % i != i - 1]
    last = T - 1 - tail
    return [k for k in range(last, 0, -1) if (last - k) % i != i - 1]


def interval_cached(T: int, n: int, i: int, first: int | None = None, tail: int | None = None) -> list[int] | None:
    """The first n steps of the interval pattern, sorted; None when fewer than n fit."""
    order = interval_order(T, i, first, tail)
    return sorted(order[:n]) if len(order) >= n else None


def family_sets(T: int, counts: dict[str, int], family: str, **params) -> dict[str, list[int]] | None:
    """Cached steps per branch for one family at exact per-branch counts (None when infeasible)."""
    from ..engine.schedule import uniform_cached_steps

    if family == "even":
        start, end = params.get("first", 1) - 1, T - params.get("tail", 1)
        if start < 0 or end - start < 1 or end > T:
            return None
        try:
            return {b: [start + k for k in uniform_cached_steps(end - start + 1, n)] for b, n in counts.items()}
        except ValueError:
            return None
    if family != "interval":
        raise ValueError(f"unknown schedule family {family!r}")
    out = {b: interval_cached(T, n, params["i"], params.get("first"), params.get("tail")) for b, n in counts.items()}
    return None if any(v is None for v in out.values()) else out


def schedule_grid(T: int, intervals=(2, 3, 4), firsts=(1, 2, 3), tails=(0, 1, 2, 3, 4)) -> list[dict]:
    """The families' parameters in the order `auto` tries them: the windows nearest the whole run first (the
    plain uniform cache, b=1 tail=1, leads), each window as an even schedule, then as interval schedules anchored
    at its start and at its end; a window with tail 0 (T-1 cacheable) right after its tail-1 twin."""
    def key(bt):
        b, t = bt
        return b + max(t, 1), b, t == 0

    grid = []
    for b, t in sorted(((b, t) for b in firsts for t in tails), key=key):
        grid.append({"family": "even", "first": b, "tail": t})
        grid += [{"family": "interval", "i": i, "first": b, "tail": t} for i in intervals if t <= 1 and b < T - 1]
        grid += [{"family": "interval", "i": i, "tail": t} for i in intervals if b == 1 and t < T - 1]
    return grid


def feasible_schedules(T: int, counts: dict[str, int], grid: list[dict]) -> list[tuple[dict, dict[str, list[int]]]]:
    """(params, cached sets) for every feasible grid entry, the first of identical sets kept."""
    seen, out = set(), []
    for params in grid:
        sets = family_sets(T, counts, **params)
        if sets is None:
            continue
        key = tuple((b, tuple(s)) for b, s in sorted(sets.items()))
        if key not in seen:
            seen.add(key)
            out.append((params, sets))
    return out


def describe(params: dict, sets: dict[str, list[int]] | None = None, T: int | None = None) -> str:
    """A short label, e.g. even(b=1,tail=1) or uniform(i=2,b=1,tail=0) (interval, first cached step and the
    computed tail, T-1 included, of the first branch's set: tail=0 caches T-1; `uniform-end` when anchored at
    the tail)."""
    steps = next(iter(sets.values()), []) if sets else []
    if params.get("family") == "even":
        name, where = "even", ""
    else:
        name, where = ("uniform-end" if params.get("first") is None else "uniform"), f"i={params['i']},"
    if steps and T is not None:
        return f"{name}({where}b={steps[0]},tail={T - 1 - steps[-1]})"
    anchor = ",".join(f"{k}={v}" for k, v in params.items() if k in ("first", "tail"))
    return f"{name}({where}{anchor})"
