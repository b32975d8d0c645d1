"""Working solutions of the chapters' ✎ exercises, out of sight of the learner.

A chapter's exercise cell holds a stub whose body raises ``NotImplementedError``; the cell after it calls
:func:`mine_or_solution`, which returns the learner's function once they have written it, and this folder's
solution while the stub is untouched, so that the chapter runs top to bottom (and CI checks it) either way. The
check cells test whichever function is in use; try yours by deleting the ``raise NotImplementedError`` line.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable


def is_stub(fn: Callable) -> bool:
    """Whether ``fn`` is still the exercise's stub (its source raises NotImplementedError); a class is one while any
    of its methods is."""
    if inspect.isclass(fn):
        methods = [m.__func__ if isinstance(m, (staticmethod, classmethod)) else m for m in vars(fn).values()]
        return any(inspect.isfunction(m) and is_stub(m) for m in methods)
    return "raise NotImplementedError" in inspect.getsource(fn)


def mine_or_solution(fn: Callable, chapter: str) -> Callable:
    """``fn`` if the learner has written it, else the solution of the same name in ``solutions/<chapter>.py``."""
    if not is_stub(fn):
        print(f"using your {fn.__name__}")
        return fn
    print(f"{fn.__name__} is still the stub: using the solution in notebooks/solutions/{chapter}.py "
          "(delete the `raise NotImplementedError` line and write yours to use it)")
    return getattr(importlib.import_module(f"solutions.{chapter}"), fn.__name__)
