"""The ERTACache engine: hooks on a diffusers transformer driven by one controller per mode."""

from __future__ import annotations

from .controllers import ApplyController, FitController, RecordController, SearchController, l1
from .hooks import apply_ertacache, remove_ertacache, reset_ertacache
from .schedule import LiveSchedule, make_planned_scheduler
from .session import AdjustmentRefused, Session, check_adjustable

__all__ = [
    "ApplyController", "FitController", "RecordController", "SearchController", "Session", "LiveSchedule",
    "apply_ertacache", "remove_ertacache", "reset_ertacache", "l1", "check_adjustable", "AdjustmentRefused",
    "make_planned_scheduler",
]
