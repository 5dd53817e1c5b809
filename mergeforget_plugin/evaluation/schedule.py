"""Which evaluations a row of the report needs: the evaluation schedule, as plain functions of names.

A sequence of T tasks has T + 1 rows (the base model, then one after each task). With
``schedule="all"`` every row scores every task and every probe: T (T + 1) task evaluations.
``"needed"`` scores what AA, BWT, FWT, the forgetting curves and the final row read:

- the base model: every task (FWT reads b_k of every task k >= 2) and every probe (their change
  is measured from it);
- after task t < T: tasks 1..t+1 (the trained ones, whose forgetting is tracked, and the next,
  whose score before its own training is FWT's R[t][t+1]);
- after the last task: every task and every probe.

That leaves out the tasks t+2..T after task t, (T - 1)(T - 2) / 2 evaluations: 91 of 240 for
15 tasks. ``needed`` is the default because every number the report computes is the same
under both; ``all`` adds how tasks not yet trained fare, cell by cell.
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEDULES = ("needed", "all")
DEFAULT_SCHEDULE = "needed"


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        from ..errors import EvaluationError

        raise EvaluationError(f"eval_schedule {schedule!r} is not one of {', '.join(SCHEDULES)}.")
    return schedule


def row_plan(
    schedule: str, sequence: Sequence[str], trained: Sequence[str], probes: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The tasks (in ``sequence`` order) and probes to score in the row after the tasks ``trained``.

    ``sequence`` names the tasks of the whole sequence in training order; ``trained`` the tasks
    finished so far, this row's task included (empty for the base model's row).

    >>> row_plan("needed", ["a", "b", "c", "d"], ["a"], ["p"])
    (['a', 'b'], [])
    >>> row_plan("needed", ["a", "b", "c", "d"], ["a", "b", "c", "d"], ["p"])
    (['a', 'b', 'c', 'd'], ['p'])
    """
    check_schedule(schedule)
    untrained = [name for name in sequence if name not in trained]
    if schedule == "all" or not trained or not untrained:
        return list(sequence), list(probes)
    done = set(trained)
    return [name for name in sequence if name in done] + untrained[:1], []


def evaluation_count(schedule: str, tasks: int, probes: int = 0) -> tuple[int, int]:
    """(task evaluations, probe evaluations) of a whole sequence of ``tasks`` tasks.

    >>> evaluation_count("all", 15), evaluation_count("needed", 15)
    ((240, 0), (149, 0))
    """
    sequence = [str(i) for i in range(tasks)]
    planned = [row_plan(schedule, sequence, sequence[:t], [str(p) for p in range(probes)]) for t in range(tasks + 1)]
    return sum(len(t) for t, _ in planned), sum(len(p) for _, p in planned)
