"""search stage of energylens: plan-space enumeration, vectorised evaluation, Pareto frontier, SLO filter.

``compile`` (re-exported as ``energylens.compile``) returns a ``Plan``; see ``compile.py``.
"""

from energylens.search.compile import (
    InfeasibleSLOError,
    Pareto,
    Plan,
    PlanPoint,
    SearchSpace,
    compile,
    search,
)
from energylens.search.pareto import pareto_mask

__all__ = ["compile", "search", "Plan", "PlanPoint", "Pareto", "SearchSpace", "InfeasibleSLOError", "pareto_mask"]
