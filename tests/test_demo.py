"""The demo (demo.py): both runs, the table, the learning-curve PNG, and the
message when Fashion-MNIST is missing."""

import json
import os

import pytest

import demo


def test_demo_trains_both_modes_and_reports_them(tiny_fashion, tmp_path, capsys):
    pytest.importorskip('matplotlib')  # installed for TF 2.x only, like the demo itself
    result = str(tmp_path / 'demo')
    argv = ['--dataset', tiny_fashion, '--labels', '20', '--steps', '4', '--width', '0.0625',
            '--evaluations', '2', '--result', result]
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
