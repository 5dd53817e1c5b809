"""An lm-evaluation-harness task as a probe: general ability scored on the model in memory after every task.

The harness (``pip install lm-eval``; Axolotl depends on it) runs on the live model and
tokenizer through its ``HFLM`` wrapper, so nothing is saved or reloaded between tasks. Task
configs may come from a local folder (``include_path``) whose YAML files read local data
(``dataset_path: json`` with absolute ``data_files``), so probes run offline. The probe's scores
become a row of the report like any other probe's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvaluationError


@dataclass
class LMEvalProbe:
    """One lm-evaluation-harness task, scored as a probe named ``task`` in the report.

    Args:
        task: The probe's name in the report (must differ from every task of the sequence).
        lm_eval_task: The harness task name (e.g. ``"arc_easy"``, or one defined under ``include_path``).
        include_path: A folder of task YAML files to register; with it, the harness's own task
            index is not scanned (seconds saved per call).
        metric: The harness metric that is the probe's primary one (``"acc"``, ``"acc_norm"``, ...).
        limit: Score only the first ``limit`` documents.
        num_fewshot: Few-shot examples per document (the task's default when ``None``).
        batch_size: The harness's batch size.
    """

    task: str
    lm_eval_task: str
    include_path: str | os.PathLike[str] | None = None
    metric: str = "acc"
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    metrics: list[str] = field(default_factory=list, init=False)
    _manager: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"Probe {self.task!r}"
        if not self.lm_eval_task:
            raise EvaluationError(f"{where}: lm_eval task is empty; name an lm-evaluation-harness task.")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise EvaluationError(f"{where}: include_path {self.include_path} is not a directory of task YAML files.")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise EvaluationError(f"{where}: limit must be a positive whole number, got {self.limit!r}.")
        self.metrics = [self.metric]

    def check_available(self) -> None:
        """Refuse, before anything trains, a probe the installed harness cannot run."""
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise EvaluationError(
                f"Probe {self.task!r} is an lm-evaluation-harness task, but lm_eval is not installed "
                "(pip install lm-eval; Axolotl brings it)."
            ) from None
        if self.lm_eval_task not in self._task_manager().all_tasks:
            raise EvaluationError(
                f"Probe {self.task!r}: lm-evaluation-harness knows no task {self.lm_eval_task!r}"
                + (f" (looked in {self.include_path} only)" if self.include_path else "")
                + "."
            )

    def _task_manager(self) -> Any:
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            include = str(self.include_path) if self.include_path is not None else None
            self._manager = TaskManager(include_path=include, include_defaults=include is None)
        return self._manager

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """The harness's metrics for this task, ``{metric: value}`` (standard errors left out)."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        was_training = model.training
        try:
            harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            output = simple_evaluate(
                model=harness_model,
                tasks=[self.lm_eval_task],
                task_manager=self._task_manager(),
                limit=self.limit,
                num_fewshot=self.num_fewshot,
                log_samples=False,
                bootstrap_iters=0,
                # The harness seeds the global generators by default; the trainer's must not move.
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
        finally:
            model.train(was_training)
        results = (output or {}).get("results", {}).get(self.lm_eval_task, {})
        values = {
            key.split(",")[0]: float(value)
            for key, value in results.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))
        }
        if self.metric not in values:
            raise EvaluationError(
                f"Probe {self.task!r}: lm-evaluation-harness task {self.lm_eval_task!r} reports {sorted(values)}, "
                f"not {self.metric!r}; set metric to one of them."
            )
        return values
