"""Refinement sampling: the loop (refine.py), keep-probability schedules, guidance."""

from grn.sampling.refine import RefineResult, refine

__all__ = ["RefineResult", "refine"]
