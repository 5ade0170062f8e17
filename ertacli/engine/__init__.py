"""The ERTACache engine: hooks on a diffusers transformer driven by one controller per mode."""

from __future__ import annotations

from .controllers import ApplyController, FitController, RecordController, SearchController, l1
from .config import CallClock, ErtaCacheConfig
from .hooks import apply_ertacache, attached_config, remove_ertacache, reset_ertacache
from .schedule import LiveSchedule, make_planned_scheduler
from .session import AdjustmentRefused, Session, backbone_config, check_adjustable

__all__ = [
    "ApplyController", "FitController", "RecordController", "SearchController", "Session", "LiveSchedule",
    "CallClock", "ErtaCacheConfig", "apply_ertacache", "attached_config", "backbone_config", "remove_ertacache",
    "reset_ertacache", "l1", "check_adjustable", "AdjustmentRefused", "make_planned_scheduler",
]
