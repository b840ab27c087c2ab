"""The statistics and the rules of bench/fashion_table2.py (round 2), on made-up records."""

import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import fashion_table2 as table  # noqa: E402

pytest.importorskip('scipy')
A, B = table.cell_by_name('A'), table.cell_by_name('B')


def add(records, cell, mode, seed, moving, precise=None):
    run = table.Run(cell.width, cell.labels, mode, cell.steps, seed)
    records[run] = {
        'error_dense_moving': moving,
        'error_dense_precise': moving if precise is None else precise,
    }


def cell_records(cell, mode, gains, seeds=None, records=None):
    """Supervised at 30 % error and ``mode`` at 30 % − gain (points) per seed."""
    records = {} if records is None else records
    for seed, gain in zip(seeds or cell.seeds, gains):
        add(records, cell, 'supervised', seed, 0.30)
        add(records, cell, mode, seed, 0.30 - gain / 100)
    return records


def test_paired_gain_mean_se_interval_and_detectable_effect():
    from scipy import stats

    gains = [1.0, -0.5, 0.8, 0.2, -0.1, 0.6]
    comparison = table.paired(A, 'asl', cell_records(A, 'asl', gains), 'moving')
    mean = sum(gains) / 6
    sd = (sum((g - mean) ** 2 for g in gains) / 5) ** 0.5
    se = sd / 6**0.5
    t = stats.t.ppf(0.975, 5)
    assert comparison['seeds'] == list(range(6))
    assert comparison['mean'] == pytest.approx(mean)
    assert comparison['se'] == pytest.approx(se)
    assert comparison['interval'] == pytest.approx([mean - t * se, mean + t * se])
    assert comparison['interval'][0] < 0 < comparison['interval'][1]
    assert comparison['detectable'] == pytest.approx((t + stats.t.ppf(0.8, 5)) * se)
    assert table.verdict(comparison).startswith('not shown (detectable')


def test_verdicts_and_the_statistic_used():
    records = cell_records(A, 'asl', [2.0, 2.5, 1.8, 2.2, 2.1, 1.9])
    assert table.verdict(table.paired(A, 'asl', records, 'moving')) == 'gain shown'
    for run in list(records):  # the precise errors say the opposite
        if run.mode == 'asl':
            records[run]['error_dense_precise'] = 0.33 + 0.001 * run.seed
    assert table.verdict(table.paired(A, 'asl', records, 'precise')) == 'loss shown'
    assert table.verdict(table.paired(A, 'asl', {}, 'moving')) == 'too few seeds'


def test_a_qualifies_only_when_its_confirmation_keeps_the_pooled_interval_above_zero():
    records = cell_records(A, 'asl', [2.0, 2.5, 1.8, 2.2, 2.1, 1.9])
    assert table.due(table.cell_by_name('A-confirm'), records)
    assert table.qualifies('A', records) is None  # confirmation not run yet
    assert not table.due(B, records) and not table.due(table.cell_by_name('C'), records)
    confirm = table.cell_by_name('A-confirm')
    good = cell_records(confirm, 'asl', [1.5, 2.0, 1.0, 2.5, 1.7], records=dict(records))
    assert table.qualifies('A', good) is True and table.demo_cell(good) == ('A', True)
    assert not table.due(B, good) and table.due(table.cell_by_name('C'), good)
    bad = cell_records(confirm, 'asl', [-6.0, -8.0, -5.0, -7.0, -9.0], records=dict(records))
    assert table.qualifies('A', bad) is False and table.due(B, bad)


def test_without_a_shown_gain_b_runs_and_the_demo_falls_back_to_a():
    records = cell_records(A, 'asl', [1.0, -0.5, 0.8, 0.2, -0.1, 0.6])
    assert not table.due(table.cell_by_name('A-confirm'), records)
    assert table.qualifies('A', records) is False and table.due(B, records)
    assert table.qualifies('B', records) is None
    records = cell_records(B, 'sesemi', [-2.0, -1.0, 0.5, -3.0, -1.5], records=records)
    assert table.qualifies('B', records) is False
    assert not table.due(table.cell_by_name('B-confirm'), records)
    assert table.due(table.cell_by_name('C'), records)
    assert table.demo_cell(records) == ('A', False)


def test_the_primary_comparison_is_declared_and_first():
    assert table.PRIMARY == ('A', 'asl') and table.CELLS[0].name == 'A'
    assert (A.width, A.labels, A.steps, A.seeds) == (0.25, 50, 900, tuple(range(6)))
    runs = table.cell_runs(A)
    assert runs[:3] == [table.Run(0.25, 50, m, 900, 0) for m in ('supervised', 'asl', 'sesemi')]
    assert len(runs) == 18
    rows = table.summarize(cell_records(A, 'asl', [1.0, 2.0]))
    assert [r['primary'] for r in rows] == [True]
