"""Calibration: profile, search, fit and placement as functions of a sampler, samples and settings.

Nothing here writes a run directory; the commands (`ertacli/commands/`) do, and `ertacli.calibrate` runs the
same functions in memory on a user's own pipeline.
"""
