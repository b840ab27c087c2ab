"""Precise BatchNorm statistics (precise_bn.py, --precise_bn on the entry and on evaluate.py):
the recomputed statistics against a numpy average over the same batches, the fixed batches,
bit-identical training with and without the flag, post hoc equal to in-run, and bad values."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, expect_usage_error, take, write_image_folder

from sesemi_base.compat import TF1, K, keras, tf
from sesemi_tf import pipeline, precise_bn

EPSILON = 1e-3
SHAPE = (3, 3, 2)


@pytest.fixture(autouse=True)
def fresh_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def small_model(seed=0):
    """Input → trunk (BatchNorm, 1×1 convolution, BatchNorm) → pooling → softmax, with random
    BatchNorm scales and offsets."""
    from networks import layers

    inputs = keras.layers.Input(SHAPE)
    x = layers.BatchNormalization(epsilon=EPSILON, name='bn1')(inputs)
    x = keras.layers.Conv2D(4, 1, name='conv')(x)
    x = layers.BatchNormalization(epsilon=EPSILON, name='bn2')(x)
    trunk = keras.Model(inputs, x, name='trunk')
    outer = keras.layers.Input(SHAPE)
    y = keras.layers.Dense(3, activation='softmax')(
        keras.layers.GlobalAveragePooling2D()(trunk(outer))
    )
    model = keras.Model(outer, y)
    rng = np.random.RandomState(seed)
    for bn in (trunk.get_layer('bn1'), trunk.get_layer('bn2')):
        channels = int(bn.gamma.shape[0])
        K.set_value(bn.gamma, rng.uniform(0.5, 2.0, channels).astype(np.float32))
        K.set_value(bn.beta, rng.normal(0.0, 1.0, channels).astype(np.float32))
    return model, trunk


def numpy_precise(images, trunk, batch):
    """The plain average over batches of each BatchNorm's batch mean and fed variance, the
    network in training mode, in float64 numpy."""
    bn1, conv, _bn2 = trunk.get_layer('bn1'), trunk.get_layer('conv'), trunk.get_layer('bn2')
    kernel, bias = [K.get_value(w).astype(np.float64) for w in conv.weights]

    def moments(f):
        flat = f.reshape(-1, f.shape[-1])
        n = len(flat)
        return flat.mean(0), flat.var(0) * n / (n - 1) * n / (n - 1 - EPSILON)

    def normalise(f, bn):
        mean, var = f.reshape(-1, f.shape[-1]).mean(0), f.reshape(-1, f.shape[-1]).var(0)
        return (f - mean) / np.sqrt(var + EPSILON) * K.get_value(bn.gamma) + K.get_value(bn.beta)

    sums = None
    count = len(images) // batch
    for k in range(count):
        x = images[k * batch : (k + 1) * batch].astype(np.float64)
        f = normalise(x, bn1).reshape(-1, SHAPE[-1]).dot(kernel.reshape(SHAPE[-1], -1)) + bias
        f = f.reshape(x.shape[:3] + (-1,))
        stats = moments(x) + moments(f)
        sums = stats if sums is None else tuple(a + b for a, b in zip(sums, stats))
    return [s / count for s in sums]


def test_recomputed_statistics_equal_a_numpy_average_over_the_same_batches():
    model, trunk = small_model()
    rng = np.random.RandomState(1)
    images = rng.normal(2.0, 3.0, (20,) + SHAPE).astype(np.float32)
    batches = tf.data.Dataset.from_tensor_slices(({'super_data': images}, images[:, 0, 0, 0]))
    precise_bn.recompute(model, batches.batch(4), 5)
    got = [
        K.get_value(v)
        for name in ('bn1', 'bn2')
        for v in (trunk.get_layer(name).moving_mean, trunk.get_layer(name).moving_variance)
    ]
    for value, want in zip(got, numpy_precise(images, trunk, 4)):
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5)
    # The moving statistics before were the initial 0 / 1: far from these.
    assert not np.allclose(got[0], 0.0, atol=0.5)


def test_recompute_needs_a_batch():
    model, _ = small_model()
    with pytest.raises(ValueError, match='at least one batch'):
        precise_bn.recompute(model, None, 0)


def test_the_batches_are_fixed_and_none_of_the_training_stream():
    rng = np.random.RandomState(0)
    images = rng.normal(0.0, 1.0, (12, 8, 8, 1)).astype(np.float32)
    first = take(precise_bn.labeled_batches(images, 6, seed=3, hflip=True), 2)
    again = take(precise_bn.labeled_batches(images, 6, seed=3, hflip=True), 2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0]['super_data'], b[0]['super_data'])
    assert first[0][0]['super_data'].shape == (6, 8, 8, 1)
    # The training pipeline of the run (seed 3) draws other images and augmentations.
    sampler = pipeline.BatchSampler(np.arange(12), [], 6, 0, 3)
    labels = np.zeros((12, 1), np.float32)
    training = take(pipeline.make_dataset(images, labels, sampler, 3, True), 1)[0]
    assert not np.allclose(training[0]['super_data'], first[0][0]['super_data'])
    # They are the training pipeline's own batches from step 0 with seed + 1000.
    sampler = pipeline.BatchSampler(np.arange(12), [], 6, 0, 1003)
    shifted = take(pipeline.make_dataset(images, labels, sampler, 1003, True), 2)
    for a, b in zip(first, shifted):
        np.testing.assert_array_equal(a[0]['super_data'], b[0]['super_data'])


# ----------------------------------------------------------------- end to end

TINY = [
    '--data=fashion_mnist',
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=2',
    '--epochs=2',
    '--max_steps=6',
    '--mode=asl',
]


def run(tool, args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, tool)] + args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def checkpoint_values(result):
    reader = tf.train.load_checkpoint(os.path.join(result, 'checkpoints'))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if 'save_counter' not in name
    }


def model_file_weights(path):
    K.clear_session()
    model = keras.models.load_model(path, compile=False)
    weights = {w.name: K.get_value(w) for w in model.weights}
    K.clear_session()
    return weights


@pytest.fixture(scope='module')
def paired_runs(tmp_path_factory):
    """One deterministic asl run without and one with --precise_bn=3."""
    from conftest import write_fashion_mnist

    base = tmp_path_factory.mktemp('precise')
    data = write_fashion_mnist(str(base / 'fashion'))
    runs = {}
    for name, extra in (('moving', []), ('precise', ['--precise_bn=3'])):
        result = str(base / name)
        proc = run(
            'train_evaluate_asl2.py',
            TINY
            + ['--dataset=' + data, '--result=' + result, '--deterministic', '--super_dropout=0']
            + extra,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (proc, result)
    return data, runs


@pytest.mark.slow
def test_the_flag_changes_no_trained_weight_and_model_h5_carries_the_precise_statistics(
    paired_runs,
):
    _, runs = paired_runs
    (plain_proc, plain), (precise_proc, precise) = runs['moving'], runs['precise']
    trained, flagged = checkpoint_values(plain), checkpoint_values(precise)
    assert sorted(trained) == sorted(flagged)
    assert any('proxy_zero_debias' in name for name in trained)
    for name in trained:
        np.testing.assert_array_equal(trained[name], flagged[name], err_msg=name)

    with open(os.path.join(plain, 'result.json')) as f:
        plain_result = json.load(f)
    with open(os.path.join(precise, 'result.json')) as f:
        precise_result = json.load(f)
    assert (
        plain_result['model_statistics'] == 'moving' and 'error_dense_precise' not in plain_result
    )
    assert precise_result['model_statistics'] == 'precise' and precise_result['precise_bn'] == 3
    assert (
        precise_result['error_dense_moving']
        == precise_result['error_dense']
        == plain_result['error_dense']
    )
    assert 0.0 <= precise_result['error_dense_precise'] <= 1.0
    assert 'Precise BatchNorm statistics (3 batches' in precise_proc.stdout
    # --deterministic makes TF 2's tf.data log a C++ line about each rewritten parallel map.
    for proc in (plain_proc, precise_proc):
        assert all('use_unbounded_threadpool' in line for line in proc.stderr.splitlines())

    moving_file = model_file_weights(os.path.join(plain, 'model.h5'))
    precise_file = model_file_weights(os.path.join(precise, 'model.h5'))
    for name, value in moving_file.items():
        if 'moving_' in name:
            assert not np.allclose(value, precise_file[name]), name
        else:
            np.testing.assert_array_equal(value, precise_file[name], err_msg=name)


@pytest.mark.slow
def test_post_hoc_on_model_h5_equals_the_runs_own(paired_runs, tmp_path):
    data, runs = paired_runs
    output = str(tmp_path / 'evaluation.json')
    proc = run(
        'evaluate.py',
        [
            '--model=' + os.path.join(runs['moving'][1], 'model.h5'),
            '--dataset=' + data,
            '--precise_bn=3',
            '--output=' + output,
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(output) as f:
        post_hoc = json.load(f)
    with open(os.path.join(runs['precise'][1], 'result.json')) as f:
        in_run = json.load(f)
    assert post_hoc['precise_bn'] == 3 and 'error_dense' not in post_hoc
    assert post_hoc['error_dense_precise'] == in_run['error_dense_precise']
    assert post_hoc['error_single_precise'] == in_run['error_single_precise']


@pytest.mark.slow
def test_post_hoc_without_the_runs_files_is_one_line(paired_runs, tmp_path):
    import shutil

    data, runs = paired_runs
    model = str(tmp_path / 'model.h5')
    shutil.copy(os.path.join(runs['moving'][1], 'model.h5'), model)
    proc = run('evaluate.py', ['--model=' + model, '--dataset=' + data, '--precise_bn=3'])
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and 'args.json' in proc.stderr, proc.stderr
    assert os.listdir(str(tmp_path)) == ['model.h5']


@pytest.mark.parametrize('tool', ['train_evaluate_asl2.py', 'evaluate.py'])
def test_a_negative_count_is_a_usage_error(tool, tmp_path):
    args = (
        ['--precise_bn=-1', '--model=' + str(tmp_path / 'model.h5')]
        if tool == 'evaluate.py'
        else ['--precise_bn=-1', '--result=' + str(tmp_path / 'r')]
    )
    proc = run(tool, args)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'precise_bn' in proc.stderr and 'Traceback' not in proc.stderr
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.slow
def test_on_an_image_folder(tmp_path):
    root = str(tmp_path / 'photos')
    broken = write_image_folder(root, per_class=10, unlabeled=0, test_folder=True)
    os.remove(os.path.join(root, broken))
    result = str(tmp_path / 'run')
    proc = run(
        'train_evaluate_asl2.py',
        [
            '--data=folder',
            '--dataset=' + root,
            '--image_size=16',
            '--network=convnet',
            '--width=0.0625',
            '--batch_size=2',
            '--max_steps=3',
            '--result=' + result,
            '--mode=asl',
            '--precise_bn=2',
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    output = str(tmp_path / 'evaluation.json')
    proc = run(
        'evaluate.py',
        ['--model=' + os.path.join(result, 'model.h5'), '--precise_bn=2', '--output=' + output],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(output) as f:
        assert json.load(f)['error_dense_precise'] == final['error_dense_precise']


@pytest.mark.slow
@pytest.mark.skipif(TF1, reason='TF 1.15 trains under no tf.distribute strategy here')
def test_under_two_replicas(paired_runs, tmp_path):
    data, runs = paired_runs
    result = str(tmp_path / 'mirrored')
    proc = run(
        'train_evaluate_asl2.py',
        TINY
        + [
            '--dataset=' + data,
            '--result=' + result,
            '--deterministic',
            '--super_dropout=0',
            '--distribute=mirrored',
            '--cpu_replicas=2',
            '--sync_bn',
            '--precise_bn=3',
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    with open(os.path.join(runs['precise'][1], 'result.json')) as f:
        single = json.load(f)
    # Same batches on the copy of the same (round-off apart) weights: the same errors, up to
    # two of the 30 test images that round-off moves across a decision boundary. Counted in
    # images: the difference of two error fractions is not exactly 2 / 30 when it is two.
    assert final['replicas'] == 2 and final['model_statistics'] == 'precise'
    images = abs(final['error_dense_precise'] - single['error_dense_precise']) * 30
    assert round(images) <= 2


def test_a_count_that_is_no_integer_is_a_usage_error(tiny_fashion, tmp_path, capsys):
    expect_usage_error(
        capsys, TINY + ['--dataset=' + tiny_fashion, '--precise_bn=x'], '--precise_bn'
    )
