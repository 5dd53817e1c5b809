"""The benchmark's continual merges (benchmarks/merges.py) against their definitions, on small matrices."""

from __future__ import annotations

import sys

import pytest
import torch

from .helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from merges import OPCM, Factored, magmax, opcm_project, protected_rank, thin_svd  # noqa: E402


def factored(seed: int, out: int = 6, inp: int = 5, rank: int = 2) -> Factored:
    generator = torch.Generator().manual_seed(seed)
    return Factored(torch.randn(out, rank, generator=generator), torch.randn(inp, rank, generator=generator))


def test_magmax_keeps_the_largest_magnitude_with_its_sign_and_scales_it():
    first = {"q": torch.tensor([[1.0, -3.0], [0.5, 2.0]])}
    second = {"q": torch.tensor([[-2.0, 1.0], [0.5, -2.0]])}
    merged = magmax([first, second], scale=0.5)
    # Ties (0.5 vs 0.5, 2 vs -2) go to the later task, as in the reference's `>=`.
    assert torch.equal(merged["q"], 0.5 * torch.tensor([[-2.0, -3.0], [0.5, -2.0]]))
    assert torch.equal(magmax([{"q": factored(0).dense()}])["q"], 0.5 * factored(0).dense())
    # Factored task vectors give what their dense matrices give.
    vectors = [{"q": factored(s)} for s in range(3)]
    assert torch.allclose(magmax(vectors)["q"], magmax([{"q": v["q"].dense()} for v in vectors])["q"])


def test_thin_svd_of_factors_is_the_svd_of_the_product():
    matrix = factored(1, rank=3)
    u, sigma, v = thin_svd(matrix)
    assert torch.allclose(u @ torch.diag(sigma) @ v.T, matrix.dense(), atol=1e-5)
    assert torch.allclose(sigma, torch.linalg.svdvals(matrix.dense())[:3], atol=1e-5)
    assert torch.allclose(u.T @ u, torch.eye(3), atol=1e-5) and torch.allclose(v.T @ v, torch.eye(3), atol=1e-5)
    assert matrix.squared_norm() == pytest.approx(float(matrix.dense().pow(2).sum()), rel=1e-5)


def test_protected_rank_counts_the_leading_share_at_or_below_alpha():
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert [protected_rank(sigma, a) for a in (0.3, 0.4, 0.5, 0.7, 0.95, 1.0)] == [0, 1, 1, 2, 3, 4]
    assert protected_rank(torch.zeros(3), 0.5) == 0


def reference_opcm(vectors: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """OPCM as its reference code computes it (fusion_bench method/opcm): a full SVD of the merged
    matrix, the new vector in that basis with its top r x r block and its diagonal set to zero."""
    merged, scale, norms = vectors[0].clone(), 1.0, [float(vectors[0].norm())]
    for vector in vectors[1:]:
        norms.append(float(vector.norm()))
        u, sigma, vh = torch.linalg.svd(merged, full_matrices=True)
        r = protected_rank(sigma, alpha)
        inner = u.T @ vector @ vh.T
        inner[range(min(inner.shape)), range(min(inner.shape))] = 0
        inner[:r, :r] = 0
        summed = scale * merged + u @ inner @ vh
        scale = float(summed.norm()) / (sum(norms) / len(norms))
        merged = summed / scale
    return merged


def test_opcm_matches_its_reference_where_the_merged_matrix_has_full_rank():
    # 5 x 5 updates of rank 5: the merged matrix has no null space, so the thin SVD is the full one.
    vectors = [factored(seed, out=5, inp=5, rank=5) for seed in range(4)]
    running = OPCM(alpha=0.5)
    for vector in vectors:
        running.add({"q": vector})
    expected = reference_opcm([v.dense() for v in vectors], alpha=0.5)
    assert torch.allclose(running.merged["q"].dense(), expected, atol=1e-4)
    # ‖M_t‖ is the mean norm of the task vectors (the adaptive rescale).
    mean_norm = sum(float(v.dense().norm()) for v in vectors) / len(vectors)
    assert float(running.merged["q"].dense().norm()) == pytest.approx(mean_norm, rel=1e-5)


def test_opcm_projection_removes_the_protected_block_and_the_diagonal():
    merged, task = factored(2, rank=3), factored(3, rank=2)
    u, sigma, v = thin_svd(merged)
    r = protected_rank(sigma, 0.8)
    assert 0 < r < 3
    projected = opcm_project(merged, task, 0.8).dense()
    inner = u.T @ projected @ v
    assert torch.allclose(inner[:r, :r], torch.zeros(r, r), atol=1e-5)
    assert torch.allclose(torch.diagonal(inner), torch.zeros(3), atol=1e-5)
    # What lies outside the merged matrix's row and column spaces is left as it was.
    outside = torch.eye(6) - u @ u.T
    assert torch.allclose(outside @ projected, outside @ task.dense(), atol=1e-5)


def test_opcm_first_task_is_the_task_and_its_merge_is_a_low_rank_lora():
    vectors = [factored(seed, out=40, inp=30, rank=2) for seed in range(3)]
    running = OPCM()
    running.add({"q": vectors[0]})
    assert torch.allclose(running.merged["q"].dense(), vectors[0].dense(), atol=1e-5) and running.scale == 1.0
    for vector in vectors[1:]:
        running.add({"q": vector})
    # The projected task vector lies in the merged matrix's spaces plus its own: the rank grows by
    # at most the task's rank per task (here 2, 3 tasks), far below 30.
    assert running.rank()["q"] <= 3 * 2


def test_opcm_rescales_with_one_norm_over_every_module():
    first = {"q": factored(10), "v": factored(11, out=4, inp=3, rank=1)}
    second = {"q": factored(12), "v": factored(13, out=4, inp=3, rank=1)}
    running = OPCM()
    running.add(first)
    running.add(second)

    def norm(vectors):
        return sum(float(v.dense().pow(2).sum()) for v in vectors.values()) ** 0.5

    # λ is one number for the whole model: the merged update's norm is the mean of the task norms,
    # while each module's share of it follows that module's own sum.
    merged = {name: running.merged[name] for name in ("q", "v")}
    assert norm(merged) == pytest.approx((norm(first) + norm(second)) / 2, rel=1e-5)
    summed = {name: first[name].dense() + opcm_project(first[name], second[name]).dense() for name in ("q", "v")}
    for name in ("q", "v"):
        assert torch.allclose(running.merged[name].dense() * running.scale, summed[name], atol=1e-4)
