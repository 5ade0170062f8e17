"""The one table of allowed values for the cache, predictor and fit settings.

The recipe schema (`recipe.py`), the plan validator (`plan_check.py`), the engine (`engine/predict.py`,
`engine/rectify.py`), the fit (`calibration/fit.py`), auto's candidate labels and the command-line `--predictor`
values all read these; nothing else lists them.
"""

from __future__ import annotations

RESIDUALS = ("hidden", "latent", "velocity")  # the space a cached step's residual lives in
KINDS = ("reuse", "extrapolate")  # predictor kinds
ORDERS = (1, 2)  # extrapolation orders
ABSCISSAE = ("sigma", "index")  # what an extrapolating predictor is a polynomial in
FORMS = ("linear", "sigmoid")  # rectification forms
GRANULARITIES = ("scalar", "channel", "element")  # rectification coefficient granularity
TOGGLES = ("auto", "on", "off")  # the fit's adjust / rectify / gain modes

PREDICTOR_NAMES = {"reuse": ("reuse", None), "extrapolate-1": ("extrapolate", 1), "extrapolate-2": ("extrapolate", 2)}
"""`--predictor` values: (predictor kind, order; None keeps the recipe's)."""

AUTO_PREDICTORS = {"reuse": ("reuse", 1), "x1": ("extrapolate", 1), "x2": ("extrapolate", 2)}
"""auto's short predictor names: (kind, order)."""
