"""The SLAO equations (METHOD.md), tested as math on random matrices."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergeforget_plugin.core.slao import (
    LoRAPair,
    MergeForgetConfig,
    SLAOMathError,
    blend,
    merge_coefficient,
    merge_task,
    orthogonal_basis,
    task_start_weights,
)

shapes = st.tuples(st.integers(1, 16), st.integers(1, 48)).filter(lambda s: s[0] <= s[1])
seeds = st.integers(0, 2**31 - 1)


def random_matrix(rows: int, cols: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64).to(dtype)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=seeds)
def test_orthogonal_init_has_orthonormal_rows(shape, seed):
    rank, n = shape
    a0 = orthogonal_basis(random_matrix(rank, n, seed))
    assert a0.shape == (rank, n)
    torch.testing.assert_close(a0 @ a0.T, torch.eye(rank), atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=seeds)
def test_orthogonal_init_spans_the_row_space_of_previous_a(shape, seed):
    rank, n = shape
    a_prev = random_matrix(rank, n, seed)
    a0 = orthogonal_basis(a_prev)
    # Projecting A_prev onto rowspace(A0) gives A_prev back, and both have rank r: same row space.
    projected = a_prev @ a0.T @ a0
    torch.testing.assert_close(projected, a_prev, atol=1e-4 * max(1.0, float(a_prev.abs().max())), rtol=1e-4)
    stacked_rank = torch.linalg.matrix_rank(torch.cat([a_prev, a0]).double(), rtol=1e-4)
    assert stacked_rank == torch.linalg.matrix_rank(a_prev.double(), rtol=1e-4) == rank


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds)
def test_orthogonal_init_fixes_signs_so_r_has_nonnegative_diagonal(shape, seed):
    rank, n = shape
    a_prev = random_matrix(rank, n, seed)
    q = orthogonal_basis(a_prev).T  # n x r
    r_factor = q.T @ a_prev.T  # R = Q^T A^T
    assert (torch.diagonal(r_factor) >= -1e-5).all()
    torch.testing.assert_close(torch.triu(r_factor), r_factor, atol=1e-4, rtol=0)
    torch.testing.assert_close(q @ r_factor, a_prev.T, atol=1e-4, rtol=1e-4)


def test_orthogonal_init_of_a_rank_deficient_a_is_still_orthonormal():
    row = torch.randn(1, 12)
    a_prev = torch.cat([row, 2 * row, torch.zeros(1, 12)])  # rank 1
    a0 = orthogonal_basis(a_prev)
    torch.testing.assert_close(a0 @ a0.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(a_prev @ a0.T @ a0, a_prev, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_orthogonal_init_returns_the_input_dtype_computed_in_float32(dtype):
    a_prev = random_matrix(4, 32, 0, dtype)
    a0 = orthogonal_basis(a_prev)
    assert a0.dtype == dtype
    expected = orthogonal_basis(a_prev.to(torch.float32)).to(dtype)
    torch.testing.assert_close(a0, expected, atol=0, rtol=0)


def test_orthogonal_init_refuses_rank_above_input_size():
    with pytest.raises(SLAOMathError, match=r"layers.0.q_proj: LoRA rank r=8 exceeds the layer's input size n=4"):
        orthogonal_basis(torch.randn(8, 4), module="layers.0.q_proj")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_orthogonal_init_refuses_non_finite_input(bad):
    a_prev = torch.randn(4, 16)
    a_prev[1, 3] = bad
    with pytest.raises(SLAOMathError, match=r"mod.v_proj: lora_A has 1 non-finite value"):
        orthogonal_basis(a_prev, module="mod.v_proj")


def test_lambda_schedules():
    paper, mean, constant = (
        MergeForgetConfig(),
        MergeForgetConfig(lambda_schedule="inv"),
        MergeForgetConfig(lambda_schedule="constant", lambda_constant=0.3),
    )
    for config in (paper, mean, constant):
        assert merge_coefficient(1, config) == 1.0
    assert [merge_coefficient(i, paper) for i in (2, 4, 9)] == pytest.approx([1 / math.sqrt(2), 0.5, 1 / 3])
    assert [merge_coefficient(i, mean) for i in (2, 4, 10)] == pytest.approx([0.5, 0.25, 0.1])
    assert [merge_coefficient(i, constant) for i in (2, 7)] == [0.3, 0.3]
    with pytest.raises(ValueError, match="task_index counts from 1"):
        merge_coefficient(0, paper)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, weight=st.floats(0.0, 1.0))
def test_blend_is_the_closed_form(seed, weight):
    b_merged, b_ft = random_matrix(6, 3, seed), random_matrix(6, 3, seed + 1)
    expected = (1 - weight) * b_merged.double() + weight * b_ft.double()
    torch.testing.assert_close(blend(b_merged, b_ft, weight).double(), expected, atol=1e-5, rtol=1e-5)


def test_blend_computes_in_float32_and_casts_back():
    b_merged = torch.full((2, 2), 1.0, dtype=torch.bfloat16)
    b_ft = torch.full((2, 2), 1.0 + 2**-7, dtype=torch.bfloat16)  # one bf16 ulp above 1
    result = blend(b_merged, b_ft, 0.5)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result, ((b_merged.float() + b_ft.float()) / 2).to(torch.bfloat16), atol=0, rtol=0)


def _sequence(num_tasks: int, seed: int) -> list[dict[str, LoRAPair]]:
    return [
        {
            name: LoRAPair(random_matrix(4, 10, seed + 7 * t + k), random_matrix(12, 4, seed + 7 * t + k + 3))
            for k, name in enumerate(("q", "v"))
        }
        for t in range(num_tasks)
    ]


@settings(max_examples=25, deadline=None)
@given(num_tasks=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_merged_b_unrolls_to_the_weighted_sum_of_task_bs(num_tasks, seed):
    """B_merge,T = sum_i lambda(i) prod_{j>i} (1 - lambda(j)) B_ft,i ; A_merge,T = A_ft,T."""
    config = MergeForgetConfig()
    finetuned = _sequence(num_tasks, seed)
    merged = None
    for index, task in enumerate(finetuned, start=1):
        merged = merge_task(index, merged, task, config)
    lambdas = [merge_coefficient(i, config) for i in range(1, num_tasks + 1)]
    for name in ("q", "v"):
        expected = torch.zeros(12, 4, dtype=torch.float64)
        for i, task in enumerate(finetuned):
            weight = lambdas[i] * math.prod(1 - lam for lam in lambdas[i + 1 :])
            expected += weight * task[name].b.double()
        torch.testing.assert_close(merged[name].b.double(), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(merged[name].a, finetuned[-1][name].a, atol=0, rtol=0)


def test_inverse_schedule_merges_to_the_mean_of_task_bs():
    config = MergeForgetConfig(lambda_schedule="inv")
    finetuned = _sequence(5, 3)
    merged = None
    for index, task in enumerate(finetuned, start=1):
        merged = merge_task(index, merged, task, config)
    mean_b = torch.stack([task["q"].b for task in finetuned]).mean(0)
    torch.testing.assert_close(merged["q"].b, mean_b, atol=1e-5, rtol=1e-5)


def test_task_one_merge_is_the_fine_tuned_lora_itself():
    (task,) = _sequence(1, 0)
    merged = merge_task(1, None, task, MergeForgetConfig())
    for name in task:
        assert torch.equal(merged[name].a, task[name].a) and torch.equal(merged[name].b, task[name].b)
        assert merged[name].b.data_ptr() != task[name].b.data_ptr()  # a copy, not an alias


def test_seq_strategy_keeps_the_latest_fine_tuned_lora():
    first, second = _sequence(2, 1)
    merged = merge_task(2, first, second, MergeForgetConfig(strategy="seq"))
    assert all(torch.equal(merged[n].b, second[n].b) and torch.equal(merged[n].a, second[n].a) for n in second)


def test_merge_refuses_non_finite_values_and_names_the_module():
    first, second = _sequence(2, 2)
    second["v"].b[0, 0] = float("nan")
    before = {n: (p.a.clone(), p.b.clone()) for n, p in first.items()}
    with pytest.raises(SLAOMathError, match=r"v: fine-tuned lora_B has 1 non-finite value"):
        merge_task(2, first, second, MergeForgetConfig())
    assert all(torch.equal(first[n].a, before[n][0]) and torch.equal(first[n].b, before[n][1]) for n in first)


def test_merge_refuses_different_module_sets():
    first, second = _sequence(2, 4)
    del second["v"]
    with pytest.raises(SLAOMathError, match="adapt different modules"):
        merge_task(2, first, second, MergeForgetConfig())


def test_orthogonal_start_takes_b_from_the_chosen_source():
    previous_ft, merged = _sequence(2, 5)
    paper = task_start_weights(2, previous_ft, merged, MergeForgetConfig())
    from_merge = task_start_weights(2, previous_ft, merged, MergeForgetConfig(b_init="merge"))
    for name in previous_ft:
        torch.testing.assert_close(paper[name].a, orthogonal_basis(previous_ft[name].a), atol=0, rtol=0)
        assert torch.equal(paper[name].b, previous_ft[name].b)
        assert torch.equal(from_merge[name].b, merged[name].b)


def test_carry_over_and_seq_start_from_the_previous_fine_tuned_lora():
    previous_ft, merged = _sequence(2, 6)
    for config in (MergeForgetConfig(init="carry_over"), MergeForgetConfig(strategy="seq")):
        start = task_start_weights(3, previous_ft, merged, config)
        assert all(
            torch.equal(start[n].a, previous_ft[n].a) and torch.equal(start[n].b, previous_ft[n].b) for n in start
        )


def test_standard_start_is_a_fresh_peft_style_lora():
    previous_ft, merged = _sequence(2, 7)
    start = task_start_weights(
        2, previous_ft, merged, MergeForgetConfig(init="standard"), generator=torch.Generator().manual_seed(0)
    )
    for name, pair in start.items():
        assert torch.count_nonzero(pair.b) == 0
        assert pair.a.abs().max() <= 1 / math.sqrt(pair.a.shape[1])
        assert not torch.equal(pair.a, previous_ft[name].a)


def test_task_start_is_only_for_task_two_onwards():
    previous_ft, merged = _sequence(2, 8)
    with pytest.raises(ValueError, match="task 2 onwards"):
        task_start_weights(1, previous_ft, merged, MergeForgetConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambda_schedule": "linear"}, "lambda_schedule='linear' is not one of inv_sqrt, inv, constant"),
        ({"init": "random"}, "init='random' is not one of orthogonal, standard, carry_over"),
        ({"b_init": "zero"}, "b_init='zero' is not one of ft, merge"),
        ({"strategy": "olora"}, "strategy='olora' is not one of slao, seq"),
        ({"lambda_constant": 0.0}, r"lambda_constant=0.0 must be in \(0, 1\]"),
        ({"lambda_constant": 1.5}, r"lambda_constant=1.5 must be in \(0, 1\]"),
        (
            {"strategy": "seq", "init": "orthogonal", "lambda_schedule": "inv"},
            "strategy='seq' .* so lambda_schedule would have no effect",
        ),
    ],
)
def test_config_raises_on_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MergeForgetConfig(**kwargs)


def test_huge_finite_weights_are_not_mistaken_for_non_finite_ones():
    from mergeforget_plugin.core.slao import LoRAPair, MergeForgetConfig, merge_task

    huge = torch.full((4, 8), 3e38)  # their float32 sum overflows; every value is finite
    merged = merge_task(1, None, {"m": LoRAPair(huge, huge.T.contiguous())}, MergeForgetConfig())
    assert torch.equal(merged["m"].a, huge)
    with pytest.raises(SLAOMathError, match="1 non-finite value"):
        poisoned = huge.clone()
        poisoned[0, 0] = float("nan")
        merge_task(1, None, {"m": LoRAPair(poisoned, huge.T.contiguous())}, MergeForgetConfig())
