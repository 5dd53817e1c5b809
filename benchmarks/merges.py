"""Weight-space continual merges the paper compares SLAO with, on LoRA task vectors: MagMax and OPCM.

A task vector here is one module's weight update ``ΔW = s · B A`` (out x in), for every module the
LoRA adapts; a model's task vector is the dict of them. Both merges are read from their reference
code (MagMax: danielm1405/magmax, ``task_vectors.py`` ``merge_max_abs``; OPCM: tanganke/fusion_bench,
``method/opcm/opcm.py``); the formulas are below, the code is ours. Plain torch, no model: the
benchmark turns LoRAs into task vectors and adds the merged one to a copy of the base weights.

MagMax (Marczak et al., 2024). Task t fine-tunes from task t-1's weights (here: SeqLoRA's one
LoRA), and its task vector is measured from the base model, ``τ_t = W_t - W_0``. After task t every
entry takes the value of largest magnitude among ``τ_1..τ_t`` (sign kept, a tie goes to the later
task), and the model is ``W_0 + λ m`` with λ = 0.5, the reference's default. The merge is dense:
an entry-wise maximum of low-rank matrices is not low-rank.

OPCM (Tang et al., 2025). Task vectors of independently fine-tuned models (here: one LoRA per task,
each from the base). ``M_1 = τ_1``, ``λ_1 = 1``. For task t >= 2, per adapted matrix, with the SVD
``M_{t-1} = U Σ Vᵀ`` and ``r`` the number of leading singular values whose cumulative share of
``Σ σ`` stays at or below α (0.5, the reference's default), the new task vector loses its
components in the top r x r block of that basis and on the basis's diagonal:
``τ̃ = τ - U_r U_rᵀ τ V_r V_rᵀ - Σ_{i >= r} (u_iᵀ τ v_i) u_i v_iᵀ``; then ``S = λ_{t-1} M_{t-1} + τ̃``,
``λ_t = ‖S‖ / mean_i ‖τ_i‖`` (norms over every adapted matrix together) and ``M_t = S / λ_t``.
One difference from the reference: it takes the full SVD and also removes the diagonal terms of
the null space of ``M_{t-1}``, whose basis the SVD routine picks arbitrarily; here the SVD is thin
(the rank of ``M_{t-1}`` is at most (t-1) r for rank-r task vectors, so this is exact and
cheap), and those terms are not removed. Everything is kept in factored form ``L Rᵀ``, so OPCM's
merge is itself a LoRA whose rank is the rank of ``M_t``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

MAGMAX_SCALE = 0.5
OPCM_ALPHA = 0.5


def magmax(
    task_vectors: Sequence[Mapping[str, torch.Tensor | Factored]], scale: float = MAGMAX_SCALE
) -> dict[str, torch.Tensor]:
    """``scale`` times the entry-wise largest-magnitude value over ``task_vectors``, module by module
    (factored task vectors are made dense one module at a time)."""
    if not task_vectors:
        raise ValueError("magmax needs at least one task vector.")
    merged = {}
    for name in task_vectors[0]:
        chosen = _dense(task_vectors[0][name]).clone()
        for vector in task_vectors[1:]:
            candidate = _dense(vector[name])
            chosen = torch.where(candidate.abs() >= chosen.abs(), candidate, chosen)
        merged[name] = scale * chosen
    return merged


def _dense(vector: torch.Tensor | Factored) -> torch.Tensor:
    return vector.dense() if isinstance(vector, Factored) else vector.to(torch.float32)


@dataclass
class Factored:
    """A matrix ``left @ right.T`` kept as its factors (out x k, in x k)."""

    left: torch.Tensor
    right: torch.Tensor

    def dense(self) -> torch.Tensor:
        return self.left @ self.right.T

    def squared_norm(self) -> float:
        # ‖L Rᵀ‖_F² = trace((LᵀL)(RᵀR)), without forming the matrix.
        return float(((self.left.T @ self.left) * (self.right.T @ self.right)).sum())


def thin_svd(matrix: Factored, tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, σ, V`` of ``L Rᵀ`` from QR of each factor and the SVD of the small core; singular values
    below ``tolerance`` times the largest are dropped (they are rounding, not directions)."""
    q_left, r_left = torch.linalg.qr(matrix.left)
    q_right, r_right = torch.linalg.qr(matrix.right)
    u, sigma, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    keep = sigma > tolerance * sigma.max() if sigma.numel() and sigma.max() > 0 else sigma > 0
    return q_left @ u[:, keep], sigma[keep], q_right @ vh.T[:, keep]


def protected_rank(sigma: torch.Tensor, alpha: float) -> int:
    """The number of leading singular values whose cumulative share of ``sum(σ)`` is at most ``alpha``."""
    if sigma.numel() == 0 or float(sigma.sum()) == 0.0:
        return 0
    share = torch.cumsum(sigma, 0) / sigma.sum()
    return int((share <= alpha).sum())


def opcm_project(merged: Factored, task: Factored, alpha: float = OPCM_ALPHA) -> Factored:
    """``task`` without its components in ``merged``'s top-r block and on ``merged``'s singular diagonal."""
    u, sigma, v = thin_svd(merged)
    r = protected_rank(sigma, alpha)
    # The top r x r block of Uᵀ τ V, taken out: U_r (U_rᵀ τ V_r) V_rᵀ.
    block = (u[:, :r].T @ task.left) @ (task.right.T @ v[:, :r])
    # The diagonal u_iᵀ τ v_i for the remaining directions of the basis.
    rest_u, rest_v = u[:, r:], v[:, r:]
    diagonal = ((rest_u.T @ task.left) * (rest_v.T @ task.right)).sum(dim=1)
    return Factored(
        torch.cat([task.left, -u[:, :r] @ block, -rest_u * diagonal], dim=1),
        torch.cat([task.right, v[:, :r], rest_v], dim=1),
    )


def _compressed(matrix: Factored) -> Factored:
    u, sigma, v = thin_svd(matrix)
    return Factored(u * sigma, v)


@dataclass
class OPCM:
    """OPCM's running merge over a sequence of task vectors (``add`` one per task)."""

    alpha: float = OPCM_ALPHA
    merged: dict[str, Factored] = field(default_factory=dict)
    scale: float = 1.0  # λ_t
    norms: list[float] = field(default_factory=list)

    def add(self, task_vector: Mapping[str, Factored]) -> None:
        self.norms.append(sum(v.squared_norm() for v in task_vector.values()) ** 0.5)
        if not self.merged:
            self.merged = {name: _compressed(v) for name, v in task_vector.items()}
            return
        summed = {}
        for name, vector in task_vector.items():
            previous = self.merged[name]
            projected = opcm_project(previous, vector, self.alpha)
            summed[name] = _compressed(
                Factored(
                    torch.cat([self.scale * previous.left, projected.left], dim=1),
                    torch.cat([previous.right, projected.right], dim=1),
                )
            )
        mean_norm = sum(self.norms) / len(self.norms)
        self.scale = sum(v.squared_norm() for v in summed.values()) ** 0.5 / mean_norm
        self.merged = {name: Factored(v.left / self.scale, v.right) for name, v in summed.items()}

    def rank(self) -> dict[str, int]:
        return {name: int(v.left.shape[1]) for name, v in self.merged.items()}
