"""The demo (demo.py): both runs, the table, the learning-curve PNG, and the
message when Fashion-MNIST is missing."""

import json
import os

import pytest

import demo


def test_demo_trains_both_modes_and_reports_them(tiny_fashion, tmp_path, capsys):
    pytest.importorskip('matplotlib')  # installed for TF 2.x only, like the demo itself
    result = str(tmp_path / 'demo')
    argv = [
        '--dataset',
        tiny_fashion,
        '--labels',
        '20',
        '--mode',
        'asl',
        '--steps',
        '4',
        '--width',
        '0.0625',
        '--evaluations',
        '2',
        '--result',
        result,
    ]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out

    errors = {}
    for mode in ('asl', 'supervised'):
        with open(os.path.join(result, mode, 'result.json')) as f:
            final = json.load(f)
        assert final['steps'] == 4
        errors[mode] = final['error_dense']
        with open(os.path.join(result, mode, 'metrics.jsonl')) as f:
            evaluated = [r['step'] for r in map(json.loads, f) if 'error_dense' in r]
        assert evaluated == [2, 4]
    with open(os.path.join(result, 'summary.txt')) as f:
        summary = f.read()
    assert summary in out
    rows = {line.split()[1]: line.split() for line in summary.splitlines()[1:3]}
    for mode, error in errors.items():
        assert rows[mode][:3] == ['20', mode, '4']
        assert rows[mode][3] == '%.2f%%' % (100 * error)
    assert '%+.2f points' % (100 * (errors['supervised'] - errors['asl'])) in summary
    assert 'not in the measured table' in summary  # this tiny setting was never measured
    # The runs' final lines are shown; their configuration and model summary are not.
    assert out.count('Final test error') == 2
    assert 'Configuration:' not in out and 'Total params' not in out

    with open(os.path.join(result, 'learning_curves.png'), 'rb') as f:
        png = f.read()
    assert png.startswith(b'\x89PNG') and len(png) > 10000

    # Run again: the demo replaces its own earlier runs instead of refusing them.
    assert demo.main(argv) == 0


def test_demo_without_fashion_mnist_says_what_to_install(tmp_path):
    with pytest.raises(SystemExit) as stop:
        demo.main(['--dataset', str(tmp_path / 'none')])
    message = str(stop.value.code)
    assert 'apt-get install dataset-fashion-mnist' in message
    assert 't10k-labels-idx1-ubyte.gz' in message and '--dataset' in message


def table_cell(low, high):
    return {
        'width': 0.25,
        'labels': 250,
        'mode': 'sesemi',
        'budget': 750,
        'seeds': [0, 1, 2],
        'supervised': [30.0, 31.0, 32.0],
        'self': [29.0, 30.5, 33.0],
        'gain_mean': 0.17,
        'gain_se': 0.6,
        'gain_ci95': [low, high],
    }


@pytest.mark.parametrize(
    'interval,verdict',
    [
        ((-2.4, 2.7), 'the gain is not shown'),
        ((0.3, 2.7), 'SESEMI beats the baseline'),
        ((-2.7, -0.3), 'the baseline beats SESEMI'),
    ],
)
def test_demo_quotes_the_measured_table_for_its_setting(tmp_path, interval, verdict):
    path = str(tmp_path / 'table.json')
    with open(path, 'w') as f:
        json.dump({'cells': [table_cell(*interval)]}, f)
    args = demo.parse_args(
        ['--labels', '250', '--mode', 'sesemi', '--width', '0.25', '--steps', '750']
    )
    text = demo.measured(args, path)
    assert verdict in text
    assert 'seeds 0,1,2' in text and 'supervised 31.00 %' in text and 'sesemi 30.83 %' in text
    assert 'seed spread 29.00-33.00 %' in text and '[%+.2f, %+.2f]' % interval in text
    other = demo.parse_args(
        ['--labels', '250', '--mode', 'sesemi', '--width', '0.25', '--steps', '700']
    )
    assert 'not in the measured table' in demo.measured(other, path)
    assert 'not in the measured table' in demo.measured(args, str(tmp_path / 'missing.json'))


def test_demo_quotes_round_2_with_the_moving_statistics(tmp_path):
    path2 = str(tmp_path / 'table2.json')
    row = {
        'cell': 'demo',
        'width': 0.125,
        'labels': 50,
        'steps': 900,
        'mode': 'asl',
        'moving': {
            'seeds': [0, 1],
            'supervised': [40.0, 42.0],
            'self': [37.0, 38.0],
            'mean': 3.5,
            'se': 0.5,
            'interval': [0.4, 6.6],
        },
        'precise': {'seeds': [], 'supervised': [], 'self': [], 'gains': []},
    }
    with open(path2, 'w') as f:
        json.dump({'rows': [row]}, f)
    args = demo.parse_args([])  # the defaults are the demo's setting
    text = demo.measured(args, str(tmp_path / 'none.json'), path2)
    assert 'docs/fashion_table2.md, cell demo' in text and 'seeds 0,1' in text
    assert 'supervised 41.00 %' in text and 'asl 37.50 %' in text and '[+0.40, +6.60]' in text
    assert 'SESEMI beats the baseline' in text


def test_the_time_estimate_adds_both_runs_and_their_evaluations():
    args = demo.parse_args(['--steps', '900', '--evaluations', '3'])
    # 100 of 900 asl steps after 30 s at 1,920 img/s: 0.1 s a step, 20 s of start-up.
    text = demo.estimate(args, 'asl', 100, 900, 1920, 30.0, then=900)
    step, evaluation = 0.1, 80000 * 0.1 / 192 / 3
    left = (
        800 * step + 3 * evaluation + 20 + 900 * step * demo.SUPERVISED_STEP_RATIO + 3 * evaluation
    )
    assert '100 ms per asl step' in text
    assert 'about %.0f more minutes' % (left / 60) in text
    assert '(%.1f minutes in all)' % ((left + 30) / 60) in text


def test_the_demo_shows_progress_and_evaluations_not_every_epoch():
    assert demo.shown('step 141/900  loss 0.6831  1348 img/s  ETA 0:01:48\n')
    assert demo.shown('Labeled images 50, steps per epoch 3, epochs 300, total steps 900\n')
    assert demo.shown(
        'epoch 100/300  step 300/900  lr 0.03  loss 0.4 (super 0.1)  55.0 ms/step  1700 img/s'
        '  test error dense 0.4100 single 0.4200\n'
    )
    assert demo.shown('Final test error: dense 0.3808, single view 0.3834 (900 steps).\n')
    assert not demo.shown(
        'epoch 99/300  step 297/900  lr 0.03  loss 0.4 (super 0.1)  55.0 ms/step  1700 img/s\n'
    )
    assert not demo.shown('Configuration:\n')
    assert not demo.shown('Total params: 50,336\n')
