"""The statistics and the plan of bench/fashion_table.py, on made-up runs."""

import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import fashion_table as table  # noqa: E402

pytest.importorskip('scipy')
CELL = table.Cell(0.25, 250, 'sesemi', 1000, (0, 1, 2), 'mandatory')


def record(mode, seed, errors, minutes=1.0):
    """A finished run whose evaluations at 70, 85 and 100 % gave ``errors`` (fractions)."""
    return {
        'width': 0.25,
        'labels': 250,
        'mode': mode,
        'budget': 1000,
        'seed': seed,
        'error_dense': errors[-1],
        'minutes': minutes,
        'evals': [{'step': s, 'error_dense': e} for s, e in zip((700, 850, 1000), errors)],
    }


def runs(supervised, sesemi):
    out = {}
    for seed, (a, b) in enumerate(zip(supervised, sesemi)):
        out[(0.25, 250, 'supervised', 1000, seed)] = record('supervised', seed, a)
        out[(0.25, 250, 'sesemi', 1000, seed)] = record('sesemi', seed, b)
    return out


def test_paired_gain_with_student_t_interval():
    summary = table.summarize(
        CELL,
        runs(
            supervised=[(0.30, 0.30, 0.30), (0.31, 0.31, 0.31), (0.33, 0.33, 0.33)],
            sesemi=[(0.29, 0.29, 0.29), (0.29, 0.29, 0.29), (0.30, 0.30, 0.30)],
        ),
    )
    assert summary['seeds'] == [0, 1, 2]
    assert summary['gains'] == pytest.approx([1.0, 2.0, 3.0])
    assert summary['gain_mean'] == pytest.approx(2.0)
    assert summary['gain_se'] == pytest.approx(1.0 / 3**0.5)  # sd 1 over sqrt(3)
    assert summary['t_critical'] == pytest.approx(4.303, abs=1e-3)  # t(0.975, 2 df)
    assert summary['gain_ci95'] == pytest.approx(
        [2.0 - 4.303 / 3**0.5, 2.0 + 4.303 / 3**0.5], abs=1e-3
    )
    assert summary['converged']


def test_a_run_whose_last_evaluations_spread_over_half_a_point_is_not_converged():
    summary = table.summarize(
        CELL,
        runs(
            supervised=[(0.30, 0.30, 0.30), (0.31, 0.31, 0.31)],
            sesemi=[(0.29, 0.29, 0.29), (0.296, 0.29, 0.29)],
        ),
    )  # 0.6 points between evaluations
    assert summary['spreads'][1] == [0.0, 0.6]
    assert not summary['converged']


def test_seeds_without_both_runs_are_left_out():
    records = runs(supervised=[(0.3,) * 3, (0.3,) * 3], sesemi=[(0.29,) * 3])
    summary = table.summarize(CELL, records)
    assert summary['seeds'] == [0] and 'gain_mean' not in summary  # one pair: no interval


def test_plan_runs_each_baseline_once_and_first():
    cells = [
        table.Cell(0.25, 250, 'sesemi', 1000, (0, 1), ''),
        table.Cell(0.25, 250, 'asl', 1000, (0,), ''),
    ]
    assert table.plan(cells) == [
        (0.25, 250, 'supervised', 1000, 0),
        (0.25, 250, 'sesemi', 1000, 0),
        (0.25, 250, 'supervised', 1000, 1),
        (0.25, 250, 'sesemi', 1000, 1),
        (0.25, 250, 'asl', 1000, 0),
    ]
    assert table.parse_seeds('5-7,9') == [5, 6, 7, 9]
    assert table.eval_steps(1500) == [1050, 1275, 1500]
