"""End-to-end runs of train_evaluate_asl2.py on tiny data, and its handling of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, expect_usage_error, write_cifar10

import train_evaluate_asl2 as entry

TINY = [
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=2',
    '--epochs=2',
    '--max_steps=6',
]


def run_cli(args, cwd=ROOT):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train_evaluate_asl2.py')] + args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize('mode', ['asl', 'sesemi', 'supervised'])
def test_training_leaves_every_result_file(tiny_cifar10, tmp_path, mode):
    result = str(tmp_path / 'result')
    proc = run_cli(
        [
            '--data=cifar10',
            '--dataset=' + tiny_cifar10,
            '--mode=' + mode,
            '--result=' + result,
            '--eval_every=1',
        ]
        + TINY
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ''  # TensorFlow's start-up lines and warnings are hidden
    assert set(os.listdir(result)) >= {
        'args.json',
        'split.json',
        'metrics.jsonl',
        'result.json',
        'model.h5',
        'train.log',
        'tensorboard',
        'checkpoints',
    }
    assert any(
        n.startswith('events.out.tfevents') for n in os.listdir(os.path.join(result, 'tensorboard'))
    )
    with open(os.path.join(result, 'train.log')) as f:
        log = f.read()
    assert log.count('\n') == 1 and 'epoch 1/1' in log
    with open(os.path.join(result, 'args.json')) as f:
        text = f.read()
    args = json.loads(text)
    assert list(args) == sorted(args) and args['mode'] == mode and args['epochs'] == 2
    with open(os.path.join(result, 'split.json')) as f:
        split = json.load(f)['labeled_indices']
    assert len(split) == 20 and len(set(split)) == 20
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    # 100 training images: the asl/supervised pool is the 20 labeled images (10 steps per epoch,
    # capped at 6 steps); the sesemi pool is all 100 images (50 steps per epoch).
    assert [r['epoch'] for r in rows] == [1]
    assert rows[-1]['step'] == 6
    for key in (
        'lr',
        'loss',
        'super_loss',
        'ms_per_step',
        'images_per_sec',
        'error_dense',
        'error_single',
    ):
        assert np.isfinite(rows[-1][key]), key
    assert (rows[-1]['self_loss'] is None) == (mode == 'supervised')
    assert rows[-1]['lr'] == pytest.approx(0.0, abs=1e-9)  # the schedule spans the capped run
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    assert final['steps'] == 6 and final['error_dense'] == rows[-1]['error_dense']
    assert 0.0 <= final['error_dense'] <= 1.0 and final['tf_version']
    assert 'epoch 1/1' in proc.stdout and 'test error dense' in proc.stdout


def test_eval_every_steps_evaluates_inside_long_epochs(tiny_cifar10, tmp_path):
    # sesemi on 100 images at batch 2: one epoch of 50 steps, of which 20 are run.
    result = str(tmp_path / 'result')
    proc = run_cli(
        [
            '--data=cifar10',
            '--dataset=' + tiny_cifar10,
            '--mode=sesemi',
            '--result=' + result,
            '--eval_every_steps=6',
            '--network=convnet',
            '--width=0.0625',
            '--labels=20',
            '--batch_size=2',
            '--epochs=1',
            '--max_steps=20',
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from sesemi_base.compat import TF1

    with open(os.path.join(result, 'args.json')) as f:  # TF 2: divides the interval and the epoch
        assert json.load(f)['steps_per_execution'] == (1 if TF1 else 2)
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [6, 12, 18, 20]
    assert [r['epoch'] for r in rows] == [1, 1, 1, 1]
    for row in rows:
        assert 0.0 <= row['error_dense'] <= 1.0 and np.isfinite(row['loss']) and row['self_loss']
    assert [r['lr'] for r in rows] == sorted([r['lr'] for r in rows], reverse=True)
    with open(os.path.join(result, 'result.json')) as f:
        assert json.load(f)['error_dense'] == rows[-1]['error_dense']
    with open(os.path.join(result, 'train.log')) as f:
        assert f.read().count('test error dense') == 4


def test_dry_run_prints_parameter_count_and_writes_nothing(tiny_cifar10, tmp_path):
    result = str(tmp_path / 'never')
    proc = run_cli(
        [
            '--data=cifar10',
            '--dataset=' + tiny_cifar10,
            '--network=convnet',
            '--mode=asl',
            '--labels=20',
            '--dry_run',
            '--result=' + result,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Total params: 3,128,720' in proc.stdout
    assert not os.path.exists(result)


@pytest.mark.parametrize(
    'argv,words',
    [
        (['--labels=200'], ['larger than the training set']),
        (['--labels=25'], ['multiple of the 10 classes']),
        (['--labels=5'], ['multiple of the 10 classes']),
        (['--network=resnet'], ['resnet', 'convnet', 'nin', 'wrn']),
        (['--data=mnist'], ['mnist', 'cifar10', 'svhn']),
        (['--mode=semi'], ['semi']),
        (['--epochs=0'], ['epochs']),
        (['--image_size=64'], ['--image_size=64', '--data=folder']),
        (['--no_such_flag=1'], ['no_such_flag']),
    ],
)
def test_bad_flags(capsys, tiny_cifar10, argv, words):
    expect_usage_error(capsys, ['--dataset=' + tiny_cifar10, '--dry_run'] + argv, *words)


def test_missing_folder_and_file(capsys, tmp_path):
    expect_usage_error(capsys, ['--dataset=' + str(tmp_path / 'nowhere'), '--dry_run'], 'nowhere')
    folder = write_cifar10(str(tmp_path / 'c10'))
    os.remove(os.path.join(folder, 'data_batch_3'))
    expect_usage_error(capsys, ['--dataset=' + folder, '--dry_run'], 'data_batch_3', 'dataset.txt')


def test_truncated_file_and_bad_labels(capsys, tmp_path):
    folder = write_cifar10(str(tmp_path / 'c10'))
    path = os.path.join(folder, 'test_batch')
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[: len(data) // 2])
    expect_usage_error(capsys, ['--dataset=' + folder, '--dry_run'], 'test_batch')

    folder = write_cifar10(str(tmp_path / 'c10b'))
    import pickle

    path = os.path.join(folder, 'data_batch_1')
    with open(path, 'rb') as f:
        batch = pickle.load(f, encoding='latin1')
    batch['labels'][0] = 12
    with open(path, 'wb') as f:
        pickle.dump(batch, f, protocol=2)
    expect_usage_error(capsys, ['--dataset=' + folder, '--dry_run'], 'data_batch_1')


def test_unwritable_result_folder(capsys, tiny_cifar10, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    expect_usage_error(
        capsys,
        ['--dataset=' + tiny_cifar10, '--labels=20', '--result=' + str(blocker / 'result')],
        'result folder',
    )


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    proc = run_cli(['--dataset=' + str(tmp_path / 'missing')])
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.startswith('error: ')


def test_help_lists_the_flags_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        entry.main(['train_evaluate_asl2.py', '--help'])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for flag in ('--data:', '--labels:', '--mode:', '--precision_mode:', '--[no]resume:'):
        assert flag in out


def test_positional_argument_is_refused(capsys, tiny_cifar10):
    expect_usage_error(capsys, ['--dataset=' + tiny_cifar10, '--dry_run', 'cifar10'], 'cifar10')
