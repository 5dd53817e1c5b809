"""Scoring a model on held-out rows and probes, the continual metrics, and the report built from them.

``scoring`` turns rows into scores (choice, loss, ROUGE-L, exact match); ``metrics`` turns the
accuracy matrix into AA, BWT, FWT and forgetting; ``schedule`` says which entries each row needs;
``report`` and ``trackers`` write what a user reads. The scoring API is re-exported here, so
``from mergeforget_plugin.evaluation import EvalSet`` keeps working.
"""

from .scoring import EvalSet, eval_set_from_rows, read_rows, score, score_all

__all__ = ["EvalSet", "eval_set_from_rows", "read_rows", "score", "score_all"]
