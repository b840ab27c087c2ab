"""BatchNorm moving statistics as Keras 2.2.4 computes them (networks.layers.BatchNormalization):
the zero-debiased average of the batch statistics after 1, 2 and 50 updates, one accumulator per
branch of a shared trunk (the labeled branch's writes the moving statistics, in either order of
definition, with several steps per execution and under a strategy with whole-step statistics),
exact continuation after a checkpoint, mixed bfloat16 and XLA, model files that stock Keras
loads, and the refusal of checkpoints written before each change."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

import dataset
import networks
from networks import layers
from sesemi_base.compat import TF1, K, keras, tf
from sesemi_base.errors import UsageError
from sesemi_tf.checkpoints import Checkpoints
from sesemi_tf.model import build_models, compile_model

DECAY, EPSILON, CHANNELS = 0.99, 1e-3, 3
SHAPE = (3, 3, CHANNELS)  # 2 images of 3×3: n = 18 values per channel, so n/(n−1) matters


@pytest.fixture(autouse=True)
def fresh_session():
    # TF 1.15 keeps every model in one default graph; a mixed policy must not leak.
    keras.backend.clear_session()
    yield
    if not TF1:
        keras.mixed_precision.set_global_policy('float32')
    keras.backend.clear_session()


def batches(count, seed=0):
    """Batches whose statistics are far from the 0 / 1 initial values."""
    rng = np.random.RandomState(seed)
    return [rng.normal(3.0, 2.0, (2,) + SHAPE).astype(np.float32) for _ in range(count)]


def expected(sequence):
    """The debiased moving mean and variance after the BatchNorm calls that saw ``sequence``:
    biased_t = d·biased_{t−1} + (1 − d)·x_t from 0, divided by 1 − d^t, where the variance x_t is
    the unbiased batch variance times n / (n − 1 − epsilon), as Keras 2.2.4 feeds it."""
    biased_mean = biased_var = 0.0
    for x in sequence:
        flat = np.asarray(x, np.float64).reshape(-1, CHANNELS)
        n = len(flat)
        var = flat.var(axis=0) * n / (n - 1) * n / (n - 1 - EPSILON)
        biased_mean = DECAY * biased_mean + (1 - DECAY) * flat.mean(axis=0)
        biased_var = DECAY * biased_var + (1 - DECAY) * var
    correction = 1 - DECAY ** len(sequence)
    return biased_mean / correction, biased_var / correction


def single_bn_model(bn_class=layers.BatchNormalization, **compile_args):
    """Images → BatchNorm, compiled with a zero learning rate (only the statistics move)."""
    inputs = keras.layers.Input(SHAPE)
    model = keras.Model(inputs, bn_class(momentum=DECAY, epsilon=EPSILON, name='bn')(inputs))
    model.compile(keras.optimizers.SGD(0.0), 'mse', **compile_args)
    return model


def train(model, sequence):
    for x in sequence:
        model.train_on_batch(x, np.zeros_like(x))


def statistics(model):
    bn = model.get_layer('bn')
    return K.get_value(bn.moving_mean), K.get_value(bn.moving_variance)


def assert_statistics(model, sequence, rtol=1e-5):
    mean, var = statistics(model)
    want_mean, want_var = expected(sequence)
    np.testing.assert_allclose(mean, want_mean, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=rtol, atol=1e-6)
    assert int(K.get_value(model.get_layer('bn').debias.count)) == len(sequence)


@pytest.mark.parametrize('updates', [1, 2, 50])
def test_moving_statistics_follow_the_debiased_average(updates):
    model = single_bn_model()
    sequence = batches(updates)
    train(model, sequence)
    assert_statistics(model, sequence)


def test_the_plain_average_of_stock_keras_differs():
    # Guards the test above: tf.keras' own layer keeps 99 % of its initial 0 / 1 after one step.
    model = single_bn_model(keras.layers.BatchNormalization)
    sequence = batches(1)
    train(model, sequence)
    mean, _ = statistics(model)
    assert not np.allclose(mean, expected(sequence)[0], rtol=0.1)


def test_inference_uses_the_moving_statistics_and_updates_nothing():
    model = single_bn_model()
    sequence = batches(2)
    train(model, sequence)
    before = statistics(model)
    mean, var = before
    x = batches(1, seed=1)[0]
    bn = model.get_layer('bn')
    gamma, beta = K.get_value(bn.gamma), K.get_value(bn.beta)
    want = (x - mean) / np.sqrt(var + EPSILON) * gamma + beta
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(statistics(model)[0], before[0])
    assert int(K.get_value(bn.debias.count)) == 2


def branch_batches(steps, seed=0):
    """(labeled, proxy) batches per step with clearly different statistics: N(3, 2) and
    N(−1, 0.5), so that the two branches' averages are far apart."""
    rng = np.random.RandomState(seed)
    return [
        (
            rng.normal(3.0, 2.0, (2,) + SHAPE).astype(np.float32),
            rng.normal(-1.0, 0.5, (2,) + SHAPE).astype(np.float32),
        )
        for _ in range(steps)
    ]


def two_branch_model(proxy_first=False, **compile_args):
    """A BatchNorm trunk shared by a labeled and a proxy branch (``ProxyBranch``), inputs
    [labeled, proxy], the branch calls in the order given; zero learning rate."""
    inputs = keras.layers.Input(SHAPE)
    trunk = keras.Model(
        inputs, layers.BatchNormalization(momentum=DECAY, epsilon=EPSILON, name='bn')(inputs)
    )
    labeled, proxy = keras.layers.Input(SHAPE), keras.layers.Input(SHAPE)
    if proxy_first:
        proxy_out = layers.ProxyBranch(trunk)(proxy)
        labeled_out = trunk(labeled)
    else:
        labeled_out = trunk(labeled)
        proxy_out = layers.ProxyBranch(trunk)(proxy)
    model = keras.Model([labeled, proxy], [labeled_out, proxy_out])
    model.compile(keras.optimizers.SGD(0.0), 'mse', **compile_args)
    return model, trunk.get_layer('bn')


def one_accumulator_mix(steps):
    """The moving mean of one accumulator fed by both branches, proxy then labeled each step
    (what the project computed before it kept one per branch)."""
    return expected([x for labeled, proxy in steps for x in (proxy, labeled)])[0]


def relative_difference(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


def assert_per_branch(bn, steps):
    """The moving statistics are the labeled branch's debiased average, the proxy accumulator
    the proxy branch's, and the moving mean is far from the proxy average and the mix."""
    labeled, proxy = [s[0] for s in steps], [s[1] for s in steps]
    mean, var = K.get_value(bn.moving_mean), K.get_value(bn.moving_variance)
    want_mean, want_var = expected(labeled)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    proxy_mean, proxy_var = layers.debiased_average(bn.proxy_debias, DECAY)
    np.testing.assert_allclose(proxy_mean, expected(proxy)[0], rtol=1e-5)
    np.testing.assert_allclose(proxy_var, expected(proxy)[1], rtol=1e-5)
    assert (
        int(K.get_value(bn.debias.count)) == int(K.get_value(bn.proxy_debias.count)) == len(steps)
    )
    assert relative_difference(mean, expected(proxy)[0]) > 0.5
    assert relative_difference(mean, one_accumulator_mix(steps)) > 0.1


@pytest.mark.parametrize('proxy_first', [False, True])
def test_each_branch_keeps_its_own_accumulator(proxy_first):
    model, bn = two_branch_model(proxy_first)
    steps = branch_batches(6)
    for labeled, proxy in steps:
        model.train_on_batch([labeled, proxy], [np.zeros_like(labeled)] * 2)
    assert_per_branch(bn, steps)


@pytest.mark.skipif(TF1, reason='steps_per_execution is a TF 2.x feature')
def test_each_branch_keeps_its_own_accumulator_with_two_steps_per_execution():
    model, bn = two_branch_model(steps_per_execution=2)
    steps = branch_batches(6)
    labeled = np.concatenate([s[0] for s in steps])
    proxy = np.concatenate([s[1] for s in steps])
    data = tf.data.Dataset.from_tensor_slices(((labeled, proxy), (labeled * 0, proxy * 0)))
    model.fit(data.batch(2), epochs=1, verbose=0)  # three executions of two steps
    assert_per_branch(bn, steps)


STRATEGY_RUN = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from sesemi_base.compat import K, keras, tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import test_batchnorm as t
from networks import layers
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope(), layers.global_batch_statistics():
    model, bn = t.two_branch_model(proxy_first=len(sys.argv) > 2)
steps = t.branch_batches(4)
labeled = np.concatenate([s[0] for s in steps])
proxy = np.concatenate([s[1] for s in steps])
data = tf.data.Dataset.from_tensor_slices(((labeled, proxy), (labeled * 0, proxy * 0))).batch(2)
model.fit(data, epochs=1, verbose=0)
print(json.dumps({'moving': [K.get_value(bn.moving_mean).tolist(),
                             K.get_value(bn.moving_variance).tolist()],
                  'proxy': [a.tolist() for a in layers.debiased_average(bn.proxy_debias, t.DECAY)],
                  'counts': [int(K.get_value(bn.debias.count)),
                             int(K.get_value(bn.proxy_debias.count))]}))
"""


@pytest.mark.skipif(TF1, reason='TF 1.15 trains under no tf.distribute strategy here')
def test_each_branch_keeps_its_own_accumulator_under_two_replicas_with_sync_bn():
    """Two CPU replicas, each with one image of each branch per step, whole-step statistics:
    the averages are those of the whole steps, as on one device."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=tests, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(
        [sys.executable, '-c', STRATEGY_RUN, ROOT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = branch_batches(4)
    want_labeled = expected([s[0] for s in steps])
    want_proxy = expected([s[1] for s in steps])
    assert got['counts'] == [4, 4]
    for value, want in zip(got['moving'] + got['proxy'], want_labeled + want_proxy):
        np.testing.assert_allclose(value, want, rtol=1e-5)


def test_checkpoint_round_trip_continues_the_sequence(tmp_path):
    sequence = batches(5)
    model = single_bn_model()
    train(model, sequence[:3])
    Checkpoints(str(tmp_path), model, keep=1).save(3)

    restored = single_bn_model()
    assert Checkpoints(str(tmp_path), restored, keep=1).restore_newest() is not None
    assert int(K.get_value(restored.get_layer('bn').debias.count)) == 3
    np.testing.assert_array_equal(statistics(restored)[1], statistics(model)[1])
    train(model, sequence[3:])
    train(restored, sequence[3:])
    assert_statistics(restored, sequence)
    for a, b in zip(statistics(model), statistics(restored)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_continues_both_branches(tmp_path):
    steps = branch_batches(5)

    def train_steps(model, part):
        for labeled, proxy in part:
            model.train_on_batch([labeled, proxy], [np.zeros_like(labeled)] * 2)

    model, bn = two_branch_model()
    train_steps(model, steps[:3])
    Checkpoints(str(tmp_path), model, keep=1).save(3)
    keras.backend.clear_session()
    restored, restored_bn = two_branch_model()
    assert Checkpoints(str(tmp_path), restored, keep=1).restore_newest() is not None
    assert int(K.get_value(restored_bn.proxy_debias.count)) == 3
    train_steps(restored, steps[3:])
    assert_per_branch(restored_bn, steps)


def test_the_state_is_not_counted_as_weights():
    model = single_bn_model()
    bn = model.get_layer('bn')
    assert [w.name.split('/')[-1].split(':')[0] for w in bn.weights] == [
        'gamma',
        'beta',
        'moving_mean',
        'moving_variance',
    ]
    assert model.count_params() == 4 * CHANNELS


@pytest.mark.parametrize(
    'name,full,inference',
    [('convnet', 3128720, 3127946), ('nin', 1011600, 1010442), ('wrn', 1472000, 1471226)],
)
def test_parameter_counts_are_the_reference_ones(name, full, inference):
    trunk = networks.get(name)((32, 32, 3))
    train_model, inference_model = build_models(trunk, (32, 32, 3), 10, True, 0.2)
    assert (train_model.count_params(), inference_model.count_params()) == (full, inference)
    assert all(
        type(layer) is layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
        for layer in trunk.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_model_file_loads_in_stock_keras_with_the_debiased_statistics(tmp_path):
    from sesemi_tf import model_io

    trunk = networks.get('convnet')((32, 32, 3), width=0.0625)
    model, inference = build_models(trunk, (32, 32, 3), 10, True, 0.0)
    compile_model(model, 0.0, True)
    rng = np.random.RandomState(0)
    x = rng.normal(0.0, 1.0, (4, 32, 32, 3)).astype(np.float32)
    targets = [
        np.eye(6, dtype=np.float32)[[0, 1, 2, 3]],
        np.eye(10, dtype=np.float32)[[0, 1, 2, 3]],
    ]
    model.train_on_batch([x, x], targets)
    path = str(tmp_path / 'model.h5')
    model_io.save_model(
        path, inference, model_io.Preprocessing.for_dataset(dataset.get('svhn'), None, 0)
    )
    bn = trunk.get_layer('block1_bn')
    count = int(K.get_value(bn.debias.count))
    saved = K.get_value(bn.moving_mean)
    want = inference.predict(x)

    loaded = keras.models.load_model(path)
    loaded_bn = [
        layer for layer in loaded.get_layer('convnet_trunk').layers if layer.name == 'block1_bn'
    ][0]
    assert type(loaded_bn) is keras.layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
    assert count == 1  # one step: the labeled branch's first update
    np.testing.assert_array_equal(K.get_value(loaded_bn.moving_mean), saved)
    np.testing.assert_allclose(loaded.predict(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(TF1, reason='mixed bfloat16 and jit_compile are TF 2.x features')
def test_mixed_bfloat16_under_xla():
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    model = single_bn_model(jit_compile=True, steps_per_execution=2)
    bn = model.get_layer('bn')
    assert bn.moving_mean.dtype == tf.float32 and bn.debias.biased_variance.dtype == tf.float32
    sequence = batches(4)
    # Two executions of two steps each, inside XLA.
    images = np.concatenate(sequence)
    data = tf.data.Dataset.from_tensor_slices((images, np.zeros_like(images))).batch(2)
    model.fit(data, epochs=1, verbose=0)
    rounded = [tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy() for x in sequence]
    assert_statistics(model, rounded, rtol=1e-4)


def test_checkpoint_without_the_state_is_refused(tmp_path):
    old = single_bn_model(keras.layers.BatchNormalization)
    train(old, batches(2))
    Checkpoints(str(tmp_path), old, keep=1).save(2)
    with pytest.raises(UsageError) as err:
        Checkpoints(str(tmp_path), single_bn_model(), keep=1).restore_newest()
    assert 'ckpt-2' in str(err.value) and 'earlier version' in str(err.value)
    assert '\n' not in str(err.value)


def test_resume_from_a_checkpoint_of_the_earlier_format_exits_2(tiny_fashion, tmp_path):
    result = str(tmp_path / 'run')
    args = [
        '--data=fashion_mnist',
        '--dataset=' + tiny_fashion,
        '--result=' + result,
        '--network=convnet',
        '--width=0.0625',
        '--labels=20',
        '--batch_size=2',
        '--epochs=1',
        '--max_steps=2',
    ]
    entry = os.path.join(ROOT, 'train_evaluate_asl2.py')
    # The run before the change: stock Keras BatchNorm in every trunk.
    earlier = (
        'import sys; sys.path.insert(0, %r); from sesemi_base.compat import keras; '
        'import networks.layers as l; l.BatchNormalization = keras.layers.BatchNormalization; '
        'l.ProxyBranch = lambda trunk: trunk; '
        'import train_evaluate_asl2 as e; sys.exit(e.main(sys.argv))' % ROOT
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(
        [sys.executable, '-c', earlier] + args,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {n: os.path.getmtime(os.path.join(result, n)) for n in os.listdir(result)}

    proc = subprocess.run(
        [sys.executable, entry, '--resume'] + args,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and 'starting from step 0' not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and 'ckpt-2' in lines[0] and 'earlier version' in lines[0], proc.stderr
    assert {n: os.path.getmtime(os.path.join(result, n)) for n in os.listdir(result)} == before


def test_resume_of_an_asl_checkpoint_with_one_accumulator_exits_2(tiny_fashion, tmp_path):
    """tests/data holds an asl run of 2 steps written by the version whose BatchNorm layers
    fed both branches into one accumulator (commit bab7dbc, this TF generation)."""
    import shutil

    result = str(tmp_path / 'run')
    shutil.copytree(
        os.path.join(ROOT, 'tests', 'data', 'asl_run_one_accumulator_' + ('tf1' if TF1 else 'tf2')),
        result,
    )
    before = {n: os.path.getmtime(os.path.join(result, n)) for n in os.listdir(result)}
    args = [
        '--data=fashion_mnist',
        '--dataset=' + tiny_fashion,
        '--result=' + result,
        '--network=convnet',
        '--width=0.0625',
        '--labels=20',
        '--batch_size=2',
        '--epochs=1',
        '--max_steps=2',
        '--mode=asl',
        '--resume',
    ]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train_evaluate_asl2.py')] + args,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=''),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and 'starting from step 0' not in proc.stdout
    assert proc.stderr.count('\n') == 1, proc.stderr
    assert proc.stderr.startswith('error: checkpoint ') and 'ckpt-2' in proc.stderr
    assert 'one moving average' in proc.stderr
    assert {n: os.path.getmtime(os.path.join(result, n)) for n in os.listdir(result)} == before
