"""Checkpoints and resume: kills at several points, exact resume, SIGTERM, NaN,
mismatched flags, a corrupt newest checkpoint and a result folder removed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import ROOT

# 40 training images, 20 labeled (asl pool = labeled): 10 steps per epoch, 2 epochs.
TINY = [
    '--data=fashion_mnist',
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=2',
    '--epochs=2',
    '--mode=asl',
    '--eval_every=1',
]
ENTRY = os.path.join(ROOT, 'train_evaluate_asl2.py')


def command(data, result, *extra):
    return [sys.executable, ENTRY, '--dataset=' + data, '--result=' + result] + TINY + list(extra)


def run(data, result, *extra, fault=None):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    env.pop('SESEMI_FAULT', None)
    if fault:
        env['SESEMI_FAULT'] = fault
    return subprocess.run(
        command(data, result, *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def metrics(result):
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def load_weights(path):
    from sesemi_base.compat import K, keras

    K.clear_session()
    weights = keras.models.load_model(path, compile=False).get_weights()
    K.clear_session()
    return weights


def error_lines(stderr):
    """The program's own error lines (TensorFlow's C++ start-up logging may precede them)."""
    assert 'Traceback' not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith('error: ')]


def assert_nothing_corrupt(result):
    """Every JSON file parses, metrics.jsonl has whole lines, no temporary file is left."""
    for name in os.listdir(result):
        assert '.tmp' not in name, name
        if name.endswith('.json'):
            with open(os.path.join(result, name)) as f:
                json.load(f)
    metrics(result)


def test_sigkill_at_several_points_then_resume(tiny_fashion, tmp_path):
    result = str(tmp_path / 'run')
    # Mid-step (step 7 of epoch 1), during the step-9 checkpoint write (its files are
    # on disk, the manager has not recorded it), and during the final evaluation.
    for fault in ('step:7', 'checkpoint:9', 'evaluation:20'):
        proc = run(tiny_fashion, result, '--resume', '--ckpt_every_steps=3', fault=fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-2000:])
        assert_nothing_corrupt(result)
    proc = run(tiny_fashion, result, '--resume', '--ckpt_every_steps=3')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Resuming from' in proc.stdout
    rows = metrics(result)
    assert [r['epoch'] for r in rows] == [1, 2] and [r['step'] for r in rows] == [10, 20]
    with open(os.path.join(result, 'result.json')) as f:
        assert json.load(f)['steps'] == 20
    assert len(load_weights(os.path.join(result, 'model.h5'))) > 0
    assert_nothing_corrupt(result)
    kept = sorted(
        n for n in os.listdir(os.path.join(result, 'checkpoints')) if n.endswith('.index')
    )
    assert len(kept) == 3 and 'ckpt-20.index' in kept  # --keep_checkpoints default 3


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_fashion, tmp_path):
    exact = ['--deterministic', '--super_dropout=0', '--ckpt_every_steps=4']
    whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
    assert run(tiny_fashion, whole, *exact).returncode == 0
    killed = run(tiny_fashion, resumed, *exact, fault='step:14')  # newest checkpoint: step 12
    assert killed.returncode == -signal.SIGKILL
    proc = run(tiny_fashion, resumed, *exact, '--resume')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'at step 12' in proc.stdout
    a = load_weights(os.path.join(whole, 'model.h5'))
    b = load_weights(os.path.join(resumed, 'model.h5'))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert metrics(whole)[-1]['error_dense'] == metrics(resumed)[-1]['error_dense']


def start_after_first_epoch(data, result):
    """Starts a long run in the background; returns once its first epoch is logged."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.Popen(
        command(data, result, '--epochs=30'),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    path = os.path.join(result, 'metrics.jsonl')
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(path) and os.path.getsize(path)):
        time.sleep(0.2)
    return proc


def test_sigterm_saves_and_says_how_to_resume(tiny_fashion, tmp_path):
    result = str(tmp_path / 'run')
    proc = start_after_first_epoch(tiny_fashion, result)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert '--resume' in err
    step = int(err.split('Interrupted at step ')[1].split(';')[0])
    assert 10 <= step < 300
    assert os.path.exists(os.path.join(result, 'checkpoints', 'ckpt-%d.index' % step))
    assert_nothing_corrupt(result)


def test_nan_loss_stops_and_keeps_the_good_checkpoint(tiny_fashion, tmp_path):
    result = str(tmp_path / 'run')
    proc = run(tiny_fashion, result, '--base_lr=1e30', '--ckpt_every_steps=1')
    assert proc.returncode == 3
    (line,) = error_lines(proc.stderr)
    assert 'non-finite loss at step' in line and 'super_clf_loss' in line
    bad_step = int(line.split('at step ')[1].split(' ')[0])
    saved = [
        int(n[5:-6])
        for n in os.listdir(os.path.join(result, 'checkpoints'))
        if n.endswith('.index')
    ]
    assert all(s < bad_step for s in saved)
    assert not os.path.exists(os.path.join(result, 'model.h5'))


def test_resume_with_different_flags_is_refused(tiny_fashion, tmp_path):
    result = str(tmp_path / 'run')
    assert run(tiny_fashion, result, '--max_steps=3').returncode == 0
    proc = run(tiny_fashion, result, '--max_steps=3', '--resume', '--seed=5', '--width=0.125')
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1
    assert '--seed=5 (saved: 0)' in proc.stderr and '--width=0.125 (saved: 0.0625)' in proc.stderr
    # Starting afresh over the finished run would overwrite it: refused too, files untouched.
    before = {name: os.path.getmtime(os.path.join(result, name)) for name in os.listdir(result)}
    proc = run(tiny_fashion, result, '--max_steps=3')
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-2000:]
    assert 'holds an earlier run (step 3)' in proc.stderr and '--resume' in proc.stderr
    assert {
        name: os.path.getmtime(os.path.join(result, name)) for name in os.listdir(result)
    } == before


def test_corrupt_newest_checkpoint_is_skipped(tiny_fashion, tmp_path):
    result = str(tmp_path / 'run')
    assert run(tiny_fashion, result, '--ckpt_every_steps=4').returncode == 0
    folder = os.path.join(result, 'checkpoints')
    for name in os.listdir(folder):
        if name.startswith('ckpt-20.data'):
            with open(os.path.join(folder, name), 'r+b') as f:
                f.truncate(7)
    proc = run(tiny_fashion, result, '--ckpt_every_steps=4', '--resume')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'skipping checkpoint' in proc.stderr and 'ckpt-20' in proc.stderr
    assert 'Resuming from %s at step 16' % os.path.join(folder, 'ckpt-16') in proc.stdout
    assert [r['epoch'] for r in metrics(result)] == [1, 2]


def test_result_folder_removed_mid_run(tiny_fashion, tmp_path):
    import shutil

    result = str(tmp_path / 'run')
    proc = start_after_first_epoch(tiny_fashion, result)
    # The run may write a file while the tree is being removed (rmtree then meets a
    # non-empty folder); remove again until the folder is gone.
    for _ in range(50):
        shutil.rmtree(result, ignore_errors=True)
        if not os.path.exists(result):
            break
    assert not os.path.exists(result)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    (line,) = error_lines(err)
    assert 'intact' in line
