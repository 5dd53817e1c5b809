"""The SLAO equations, in plain torch.

SLAO ("Merge before Forget", Qiao & Mahdavi, ICLR 2026, arXiv:2512.23017) keeps one LoRA across a
sequence of tasks. For every adapted layer, with A of shape (r, n) and B of shape (m, r):

Task 1 trains a standard LoRA; ``A_merge,1 = A_ft,1`` and ``B_merge,1 = B_ft,1``.

Task i >= 2:

1. Orthogonal initialization: ``Q_i R_i = QR(A_ft,i-1^T)`` (reduced, signs fixed so that
   ``diag(R_i) >= 0``), ``A_ft,i^(0) = Q_i^T`` and ``B_ft,i^(0) = B_ft,i-1``.
2. Train on task i, giving ``(A_ft,i, B_ft,i)``.
3. Time-aware asymmetric merge: ``A_merge,i = A_ft,i`` and
   ``B_merge,i = B_merge,i-1 + lambda(i) * (B_ft,i - B_merge,i-1)`` with ``lambda(i) = 1/sqrt(i)``.

This module has no dependency on transformers, PEFT, TRL or Axolotl: it maps dictionaries of
tensors (keyed by module name) to dictionaries of tensors, so it can be tested as math.
All arithmetic is done in float32 and cast back to the dtype of the input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, NamedTuple, get_args, get_origin, get_type_hints

import torch

from ..errors import SLAOMathError

Strategy = Literal["slao", "seq"]
LambdaSchedule = Literal["inv_sqrt", "inv", "constant"]
InitMode = Literal["orthogonal", "standard", "carry_over"]
BInitSource = Literal["ft", "merge"]


class LoRAPair(NamedTuple):
    """The two LoRA factors of one adapted layer: ``a`` is (r, n) (PEFT ``lora_A``), ``b`` is (m, r)."""

    a: torch.Tensor
    b: torch.Tensor


LoRAWeights = Mapping[str, LoRAPair]


@dataclass(frozen=True)
class MergeForgetConfig:
    """How the single running LoRA is initialized and merged at each task boundary.

    The defaults are the paper's SLAO; the other values exist for ablations and baselines. This
    class is the only definition of the strategy: the recipe's ``mergeforget:`` block and the
    Axolotl plugin's settings are built from its fields (types, defaults and the ``help`` text in
    each field's metadata), and the allowed values are those of the ``Literal`` types above.

    Args:
        strategy (`str`, defaults to `'slao'`):
            'slao': orthogonal init + time-aware asymmetric merge (the paper). 'seq': the SeqLoRA baseline,
            one LoRA trained task after task with no merge; the switches below must then stay at their
            defaults.
        lambda_schedule (`str`, defaults to `'inv_sqrt'`):
            Weight of task i's B in the merge: 'inv_sqrt' 1/sqrt(i) (paper), 'inv' 1/i (a running mean),
            'constant' lambda_constant for every i >= 2. lambda(1) = 1 for every schedule.
        lambda_constant (`float`, defaults to `0.5`):
            The weight used by the 'constant' schedule, in (0, 1].
        init (`str`, defaults to `'orthogonal'`):
            How task i >= 2 starts: 'orthogonal' (A from the QR basis of the previous A, paper), 'standard'
            (a fresh LoRA: Kaiming-uniform A, zero B), 'carry_over' (the previous task's fine-tuned A
            unchanged).
        b_init (`str`, defaults to `'ft'`):
            Where B starts for task i >= 2 with the 'orthogonal' and 'carry_over' inits: 'ft' (B_ft,i-1,
            paper) or 'merge' (B_merge,i-1).

    The help texts above are the fields' ``help`` metadata, which the recipe and the Axolotl settings
    show; a test keeps the two the same.

    Example:

    ```python
    >>> MergeForgetConfig(lambda_schedule="inv").lambda_schedule
    'inv'
    >>> MergeForgetConfig(strategy="seq", init="standard")
    Traceback (most recent call last):
    ...
    ValueError: strategy='seq' trains one LoRA with no merge, so init would have no effect: ...

    ```
    """

    strategy: Strategy = field(
        default="slao",
        metadata={
            "help": "'slao': orthogonal init + time-aware asymmetric merge (the paper). 'seq': the SeqLoRA baseline, "
            "one LoRA trained task after task with no merge; the switches below must then stay at their defaults."
        },
    )
    lambda_schedule: LambdaSchedule = field(
        default="inv_sqrt",
        metadata={
            "help": "Weight of task i's B in the merge: 'inv_sqrt' 1/sqrt(i) (paper), 'inv' 1/i (a running mean), "
            "'constant' lambda_constant for every i >= 2. lambda(1) = 1 for every schedule."
        },
    )
    lambda_constant: float = field(
        default=0.5, metadata={"help": "The weight used by the 'constant' schedule, in (0, 1]."}
    )
    init: InitMode = field(
        default="orthogonal",
        metadata={
            "help": "How task i >= 2 starts: 'orthogonal' (A from the QR basis of the previous A, paper), 'standard' "
            "(a fresh LoRA: Kaiming-uniform A, zero B), 'carry_over' (the previous task's fine-tuned A unchanged)."
        },
    )
    b_init: BInitSource = field(
        default="ft",
        metadata={
            "help": "Where B starts for task i >= 2 with the 'orthogonal' and 'carry_over' inits: 'ft' (B_ft,i-1, "
            "paper) or 'merge' (B_merge,i-1)."
        },
    )

    def __post_init__(self) -> None:
        for name, allowed in allowed_values().items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}.")
        if not isinstance(self.lambda_constant, (int, float)) or not (
            math.isfinite(self.lambda_constant) and 0.0 < self.lambda_constant <= 1.0
        ):
            raise ValueError(
                f"lambda_constant={self.lambda_constant!r} must be in (0, 1]: it is the weight of the "
                "new task's B in the merge."
            )
        if not self.merges:
            changed = [
                item.name
                for item in fields(self)
                if item.name != "strategy" and getattr(self, item.name) != item.default
            ]
            if changed:
                raise ValueError(
                    f"strategy='seq' trains one LoRA with no merge, so {', '.join(changed)} would have no "
                    "effect: remove them, or use strategy='slao' to run an ablation."
                )

    @property
    def merges(self) -> bool:
        """Whether tasks are merged. SeqLoRA (``strategy='seq'``) is the one rule that does not: it
        trains one LoRA straight on, each task starting where the last ended (no init, no merge)."""
        return self.strategy != "seq"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def allowed_values() -> dict[str, tuple[str, ...]]:
    """The allowed values of every choice field of :class:`MergeForgetConfig`, read from its ``Literal`` types."""
    hints = get_type_hints(MergeForgetConfig)
    return {name: get_args(hint) for name, hint in hints.items() if get_origin(hint) is Literal}


def merge_coefficient(task_index: int, config: MergeForgetConfig) -> float:
    """lambda(i), the weight of task i's fine-tuned B in the merge. lambda(1) = 1 for every schedule."""
    if task_index < 1:
        raise ValueError(f"task_index counts from 1, got {task_index}.")
    if task_index == 1 or not config.merges:
        return 1.0  # task 1, or SeqLoRA: the new task's B is taken whole
    if config.lambda_schedule == "inv_sqrt":
        return 1.0 / math.sqrt(task_index)
    if config.lambda_schedule == "inv":
        return 1.0 / task_index
    return config.lambda_constant


def _require_finite(tensor: torch.Tensor, what: str) -> None:
    # One float32 sum finds any NaN or Inf (they propagate into it) in a single pass; only when it
    # is not finite, which a sum of huge finite values could also be, is every element checked.
    if torch.isfinite(torch.sum(tensor.detach(), dtype=torch.float32)) or torch.isfinite(tensor).all():
        return
    bad = int((~torch.isfinite(tensor)).sum())
    raise SLAOMathError(f"{what} has {bad} non-finite value(s) (NaN or Inf); nothing was merged or written.")


def orthogonal_basis(a_previous: torch.Tensor, *, module: str = "<tensor>") -> torch.Tensor:
    """Return ``Q^T`` where ``Q R = QR(a_previous^T)`` is the reduced QR with ``diag(R) >= 0``.

    The rows of the result are an orthonormal basis (``A A^T = I_r``) of a space holding the row
    space of ``a_previous`` (equal to it when ``a_previous`` has full row rank).
    """
    if a_previous.ndim != 2:
        raise SLAOMathError(f"{module}: lora_A must be a matrix, got shape {tuple(a_previous.shape)}.")
    rank, in_features = a_previous.shape
    if rank > in_features:
        raise SLAOMathError(
            f"{module}: LoRA rank r={rank} exceeds the layer's input size n={in_features}, so A cannot have "
            "r orthonormal rows. Use a rank no larger than the smallest adapted layer's input size."
        )
    _require_finite(a_previous, f"{module}: lora_A")
    q, r = torch.linalg.qr(a_previous.detach().to(torch.float32).T, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    q = q * signs
    _require_finite(q, f"{module}: QR basis of lora_A")
    return q.T.contiguous().to(a_previous.dtype)


def blend(
    b_merged: torch.Tensor, b_finetuned: torch.Tensor, weight: float, *, module: str = "<tensor>"
) -> torch.Tensor:
    """``b_merged + weight * (b_finetuned - b_merged)``, computed in float32."""
    if b_merged.shape != b_finetuned.shape:
        raise SLAOMathError(
            f"{module}: lora_B shapes differ between the merged LoRA {tuple(b_merged.shape)} and the task's "
            f"fine-tuned LoRA {tuple(b_finetuned.shape)}."
        )
    _require_finite(b_merged, f"{module}: merged lora_B")
    _require_finite(b_finetuned, f"{module}: fine-tuned lora_B")
    merged32 = b_merged.detach().to(torch.float32)
    result = merged32 + weight * (b_finetuned.detach().to(torch.float32) - merged32)
    return result.to(b_finetuned.dtype)


def standard_init(like: LoRAPair, *, generator: torch.Generator | None = None) -> LoRAPair:
    """A fresh LoRA as PEFT makes it: Kaiming-uniform A (a = sqrt(5)), zero B."""
    a = torch.empty(like.a.shape, dtype=torch.float32)
    fan_in = a.shape[1]
    # kaiming_uniform_ with a=sqrt(5) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    a.uniform_(-bound, bound, generator=generator)
    return LoRAPair(a.to(like.a.dtype), torch.zeros_like(like.b))


def task_start_weights(
    task_index: int,
    previous_finetuned: LoRAWeights,
    merged: LoRAWeights,
    config: MergeForgetConfig,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, LoRAPair]:
    """The LoRA that task ``task_index`` (>= 2) starts training from, for every module."""
    if task_index < 2:
        raise ValueError("Task 1 starts from the standard LoRA init; task_start_weights is for task 2 onwards.")
    _require_same_modules(previous_finetuned, merged, "previous task's fine-tuned LoRA", "merged LoRA")
    init = config.init if config.merges else "carry_over"
    start: dict[str, LoRAPair] = {}
    for name, previous in previous_finetuned.items():
        b_source = merged[name].b if config.b_init == "merge" else previous.b
        if init == "orthogonal":
            start[name] = LoRAPair(orthogonal_basis(previous.a, module=name), b_source.detach().clone())
        elif init == "carry_over":
            _require_finite(previous.a, f"{name}: lora_A")
            start[name] = LoRAPair(previous.a.detach().clone(), b_source.detach().clone())
        else:
            start[name] = standard_init(previous, generator=generator)
        _require_finite(start[name].b, f"{name}: lora_B")
    return start


def merge_task(
    task_index: int,
    merged: LoRAWeights | None,
    finetuned: LoRAWeights,
    config: MergeForgetConfig,
) -> dict[str, LoRAPair]:
    """Fold task ``task_index``'s fine-tuned LoRA into the running merged LoRA.

    ``A_merge,i = A_ft,i``; ``B_merge,i = B_merge,i-1 + lambda(i) (B_ft,i - B_merge,i-1)``.
    ``merged`` is ``None`` for task 1. Raises :class:`SLAOMathError` before returning anything if
    any module holds a non-finite value, so a caller never writes a half-merged adapter.
    """
    for name, pair in finetuned.items():
        _require_finite(pair.a, f"{name}: fine-tuned lora_A")
        _require_finite(pair.b, f"{name}: fine-tuned lora_B")
    if merged is None or task_index == 1 or not config.merges:
        return {name: LoRAPair(p.a.detach().clone(), p.b.detach().clone()) for name, p in finetuned.items()}
    _require_same_modules(merged, finetuned, "merged LoRA", "fine-tuned LoRA")
    weight = merge_coefficient(task_index, config)
    return {
        name: LoRAPair(pair.a.detach().clone(), blend(merged[name].b, pair.b, weight, module=name))
        for name, pair in finetuned.items()
    }


def _require_same_modules(first: LoRAWeights, second: LoRAWeights, first_name: str, second_name: str) -> None:
    if set(first) != set(second):
        only_first = sorted(set(first) - set(second))[:3]
        only_second = sorted(set(second) - set(first))[:3]
        raise SLAOMathError(
            f"The {first_name} and the {second_name} adapt different modules "
            f"(only in the first: {only_first}; only in the second: {only_second})."
        )
