"""How a rank's row says that the case failed because of another rank: light on purpose (no torch), so
readers of a run (harness/present/ranks.py) can pick the failing rank's own row, whose reason says why.
"""

from __future__ import annotations

NOT_TIMED = "not timed: rank"  # a ready rank's row when another rank was not ready before timing
MISSING = "RanksMissing"  # a rank's row when another rank never reached an exchange (group.RanksMissing)


def blames_another_rank(reason: str | None) -> bool:
    """Whether a row failed because of another rank (so that rank's own row says why)."""
    return bool(reason) and (reason.startswith(NOT_TIMED) or reason.startswith(MISSING))
