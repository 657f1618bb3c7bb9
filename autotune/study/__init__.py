"""The search: its options and plan, the loop over trials, the objective, the checks before it, the
recovery of interrupted trials, the fitted curves, the budgets and the LR range test."""

from autotune.study._budget import Budgets
from autotune.study._loop import SearchListener, SearchOptions, SearchPlan, SearchResult, plan_search, search
from autotune.study._lr_find import LRFindError, LRFindResult, lr_find

__all__ = [
    "Budgets",
    "LRFindError",
    "LRFindResult",
    "SearchListener",
    "SearchOptions",
    "SearchPlan",
    "SearchResult",
    "lr_find",
    "plan_search",
    "search",
]
