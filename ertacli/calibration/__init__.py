"""Calibration: profile, search, fit and placement as functions of a sampler, samples and settings.

`run.calibrate_plan` is the one calibration path (a `Target` and a `MethodConfig` in, a `Calibration` with a
typed `Profile` and `Plan` out): `ertacli.calibrate` runs it whole, `ertacache profile / search / fit` run its
stages. Nothing here writes a run directory; the commands record what these return (`ertacli/runs/recorder.py`).
"""
