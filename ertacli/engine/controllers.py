"""The engine's four modes, one controller each, sharing the hooks' `TransformerCall` interface.

record (profile), threshold decision (search), apply a plan (generate), collect error statistics (fit).
Every norm is the L1 norm summed over the whole batch in float64 (docs/method.md "Notation").
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..dist import all_sum
from .predict import Predictor, fitted_gain
from .rectify import RectStats, rectify, sigmoid_coeffs
from .schedule import LiveSchedule, phi_value


def l1(t: torch.Tensor) -> float:
    """||t||_1 over every element, accumulated in float64."""
    return float(t.abs().sum(dtype=torch.float64))


class Controller:
    """Base: per-call counters of full (NFE) and cached transformer calls per branch.

    `check(call, output)`, when set, sees every stream's first call in a pipeline call (always computed; step 0,
    or later for a stream that starts later, as Wan2.2's low-noise expert) and may raise (e.g. a plan made for
    another model). The engine calls `begin()` when it sees a pipeline call start
    (`CallClock`); the counters stay readable until then.
    """

    schedule: LiveSchedule | None = None
    check = None

    def __init__(self, T: int, residual: str = "hidden", predictor: Predictor | None = None):
        self.T, self.residual = T, residual
        self.predictor = predictor or Predictor()
        self.begin()

    def begin(self) -> None:
        """Called before every pipeline call."""
        self._clear_counters()
        if self.schedule is not None:
            self.schedule.reset()

    def _clear_counters(self) -> None:
        self.nfe: dict[str, int] = defaultdict(int)
        self.n_cached: dict[str, int] = defaultdict(int)
        self.shapes: dict[str, list[int]] = {}

    def call_stats(self) -> dict:
        """Counters of the most recent pipeline call: per branch NFE, cached calls and output shape."""
        return {"nfe": dict(self.nfe), "cached": dict(self.n_cached), "shapes": dict(self.shapes)}

    def _check_step(self, call) -> None:
        if call.k >= self.T:
            raise RuntimeError(f"branch '{call.branch}' called {call.k + 1} times in a {self.T}-step run")

    def _computed(self, call) -> torch.Tensor:
        """A full call whose residual becomes the branch's cache."""
        v = call.compute()
        call.state.cached = call.state.residual
        self._remember(call)
        self.nfe[call.branch] += 1
        self.shapes[call.branch] = list(v.shape[1:])
        if call.state.step == 1 and self.check is not None:  # the stream's first call in this pipeline call
            self.check(call, v)
        return v

    def _remember(self, call) -> None:
        """Add the call's computed (s_k, R_k) to the branch's predictor history."""
        self.predictor.push(call.state, self.predictor.at(call.k, self.schedule), call.state.residual)

    def _predict(self, call) -> torch.Tensor:
        """R^_k for a cached step (the cached R~ itself under reuse)."""
        return self.predictor.predict(call.state, call.branch, call.k, self.predictor.at(call.k, self.schedule))


class RecordController(Controller):
    """profile: every step computed; per step and branch ||R_k||, ||R_k - R_{k-1}||, ||v_k||, ||v_k - v_{k-1}||."""

    KEYS = ("R", "dR", "v", "dv")

    def __init__(self, T: int, residual: str = "hidden", keep_tensors: bool = False):
        super().__init__(T, residual)
        self.stats: dict[str, dict[str, list[float]]] = {}
        self.keep_tensors = keep_tensors
        self.tensors: dict[str, torch.Tensor] = {}

    def on_call(self, call):
        self._check_step(call)
        k, st = call.k, call.state
        v = self._computed(call)
        R = st.residual
        rows = self.stats.setdefault(call.branch, {key: [0.0] * self.T for key in self.KEYS})
        prev_R, prev_v = st.extra.get("R"), st.extra.get("v")
        rows["R"][k] += l1(R)
        rows["v"][k] += l1(v)
        rows["dR"][k] += l1(R - prev_R) if prev_R is not None else 0.0
        rows["dv"][k] += l1(v - prev_v) if prev_v is not None else 0.0
        st.extra["R"], st.extra["v"] = R, v
        if self.keep_tensors:
            self.tensors[f"{call.branch}.R.{k}"] = R.detach().float().cpu().contiguous()
            self.tensors[f"{call.branch}.v.{k}"] = v.detach().float().cpu().contiguous()
        return call.wrap(v)


class SearchController(Controller):
    """search: compute R_k every step; cache k when e_k = ||R~ - R_k|| / ||R^gt_k|| < lambda (paper Alg. 2)."""

    def __init__(self, T: int, lam: float, gt_norms: dict[str, list[float]], residual: str = "hidden",
                 predictor: Predictor | None = None):
        super().__init__(T, residual, predictor)
        self.lam, self.gt = lam, gt_norms
        self.cached_steps: dict[str, list[int]] = defaultdict(list)
        self.errors: dict[str, dict[int, float]] = defaultdict(dict)

    def on_call(self, call):
        self._check_step(call)
        k, st = call.k, call.state
        v = call.compute()
        R = st.residual
        if 0 < k < self.T - 1 and st.cached is not None:
            den = self.gt[call.branch][k]
            pred = self._predict(call)
            num = all_sum(l1(pred - R))
            e = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
            self.errors[call.branch][k] = e
            if e < self.lam:
                self.cached_steps[call.branch].append(k)
                self.n_cached[call.branch] += 1
                return call.wrap(call.skipped(pred))
        st.cached = R
        self._remember(call)
        self.nfe[call.branch] += 1
        return call.wrap(v)


class ApplyController(Controller):
    """generate: cached steps reuse R~ (then rectify); computed steps refresh it; sigmas from the plan."""

    def __init__(self, T: int, cached: dict[str, set[int]], coeffs: dict[str, dict[int, tuple]] | None = None,
                 form: str = "linear", granularity: str = "scalar", channel_dim: int = 1,
                 schedule: LiveSchedule | None = None, residual: str = "hidden",
                 predictor: Predictor | None = None):
        self.schedule = schedule
        super().__init__(T, residual, predictor)
        self.cached = {b: set(s) for b, s in cached.items()}
        self.coeffs = coeffs or {}
        self.form, self.granularity, self.channel_dim = form, granularity, channel_dim

    prepare = None  # prepare(call) at step 0 of each branch, before anything runs (the API's step-count transfer)

    def retarget(self, other: "ApplyController") -> None:
        """Run `other`'s plan from now on (its steps, cached sets, coefficients, sigmas, predictor); counters kept."""
        self.T, self.cached, self.coeffs = other.T, other.cached, other.coeffs
        self.schedule, self.predictor = other.schedule, other.predictor
        self.form, self.granularity = other.form, other.granularity

    def on_call(self, call):
        if call.k == 0 and self.prepare is not None:
            self.prepare(call)
        self._check_step(call)
        k, st = call.k, call.state
        if self.schedule is not None:
            call.set_timestep_ratio(self.schedule.ratio(k))
        if k in self.cached.get(call.branch, ()) and st.cached is not None:
            v = call.skipped(self._predict(call))
            pq = self.coeffs.get(call.branch, {}).get(k)
            if pq is not None:
                v = rectify(v, pq[0], pq[1], self.form, self.granularity, self.channel_dim)
            self.n_cached[call.branch] += 1
            return call.wrap(v)
        return call.wrap(self._computed(call))


class FitController(Controller):
    """fit: one lockstep pass on policy S; on cached steps also run the model to measure eps = v~ - v.

    Coefficients for step k are solved from the whole batch at step k and applied at once (docs/method.md "fit").
    """

    def __init__(self, T: int, cached: dict[str, set[int]], profile_dv: dict[str, list[float]],
                 base_sigmas: list[float], adjust: bool, rectify_on: bool, form: str = "linear",
                 granularity: str = "scalar", channel_dim: int = 1, residual: str = "hidden",
                 predictor: Predictor | None = None, fit_gain: bool = False):
        self.fit_gain = fit_gain
        self.schedule = LiveSchedule(base_sigmas, phi_fn=self.phi) if adjust else None
        self.cached = {b: set(s) for b, s in cached.items()}
        self.profile_dv, self.rectify_on = profile_dv, rectify_on
        self.form, self.granularity, self.channel_dim = form, granularity, channel_dim
        super().__init__(T, residual, predictor)

    def begin(self) -> None:
        super().begin()
        self.phi_num: dict[int, float] = defaultdict(float)
        self.phi_branches: dict[int, list[str]] = defaultdict(list)
        self.coeffs: dict[str, dict[int, tuple]] = defaultdict(dict)
        self.gains: dict[str, dict[int, float]] = defaultdict(dict)

    def phi(self, k: int) -> float:
        """phi_k from this pass's numerators and the profile's ||v_k - v_{k-1}|| over the branches cached at k."""
        branches = self.phi_branches.get(k)
        if not branches:
            return 1.0
        return phi_value(self.phi_num[k], sum(self.profile_dv[b][k] for b in branches))

    def phis(self) -> dict[int, float]:
        """phi for every step cached in some branch."""
        return {k: self.phi(k) for k in sorted(self.phi_branches)}

    def on_call(self, call):
        self._check_step(call)
        k, st = call.k, call.state
        if self.schedule is not None:
            call.set_timestep_ratio(self.schedule.ratio(k))
        if k not in self.cached.get(call.branch, ()) or st.cached is None:
            return call.wrap(self._computed(call))
        if self.fit_gain:
            v = call.compute()
            vt = call.skipped(self._gain_prediction(call))
        else:
            vt = call.skipped(self._predict(call))
            v = call.compute()
        self.phi_num[k] += all_sum(l1(vt - v))
        self.phi_branches[k].append(call.branch)
        self.n_cached[call.branch] += 1
        if self.rectify_on:
            stats = RectStats.from_batch(vt, vt - v, self.granularity, self.channel_dim).reduced()
            pq = sigmoid_coeffs(stats) if self.form == "sigmoid" else stats.solve()
            self.coeffs[call.branch][k] = pq
            vt = rectify(vt, pq[0], pq[1], self.form, self.granularity, self.channel_dim)
        return call.wrap(vt)

    def _gain_prediction(self, call) -> torch.Tensor:
        """R1 + c_k P_k with c_k fitted lockstep from this step's true R_k (docs/method.md "Beyond the paper")."""
        st = call.state
        P = self.predictor.term(st, self.predictor.at(call.k, self.schedule))
        if P is None:
            return st.cached
        c = fitted_gain(P, st.residual - st.cached, all_sum)
        self.gains[call.branch][call.k] = c
        return st.cached + c * P if c != 0.0 else st.cached
