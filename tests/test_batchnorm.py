"""BatchNorm moving statistics as Keras 2.2.4 computes them (networks.layers.BatchNormalization):
the zero-debiased average of the batch statistics after 1, 2 and 50 updates, two updates per step
on a shared trunk, exact continuation after a checkpoint, mixed bfloat16 and XLA, model files that
stock Keras loads, and the refusal of checkpoints written before the change."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import dataset
import networks
import utils
from checkpoints import Checkpoints
from compat import TF1, K, keras, tf
from conftest import ROOT
from networks import layers
from utils import UsageError

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


def test_a_shared_trunk_updates_once_per_call():
    """asl and sesemi call the trunk on both branches: t counts calls, two per step, and no update
    is lost. The branches' order within a step is the framework's (TF 1.15 leaves it open)."""
    inputs = keras.layers.Input(SHAPE)
    trunk = keras.Model(inputs, layers.BatchNormalization(momentum=DECAY, epsilon=EPSILON,
                                                           name='bn')(inputs))
    a, b = keras.layers.Input(SHAPE), keras.layers.Input(SHAPE)
    model = keras.Model([a, b], [trunk(a), trunk(b)])
    model.compile(keras.optimizers.SGD(0.0), 'mse')
    steps = [batches(2, seed=s) for s in range(2)]
    for xa, xb in steps:
        model.train_on_batch([xa, xb], [np.zeros_like(xa)] * 2)
    bn = trunk.get_layer('bn')
    assert int(K.get_value(bn.debias.count)) == 4
    mean = K.get_value(bn.moving_mean)
    orders = [sum((list(step) if keep else step[::-1] for step, keep in zip(steps, flags)), [])
              for flags in itertools.product([True, False], repeat=len(steps))]
    assert any(np.allclose(mean, expected(order)[0], rtol=1e-5) for order in orders)


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


def test_the_state_is_not_counted_as_weights():
    model = single_bn_model()
    bn = model.get_layer('bn')
    assert [w.name.split('/')[-1].split(':')[0] for w in bn.weights] == [
        'gamma', 'beta', 'moving_mean', 'moving_variance']
    assert model.count_params() == 4 * CHANNELS


@pytest.mark.parametrize('name,full,inference', [
    ('convnet', 3128720, 3127946), ('nin', 1011600, 1010442), ('wrn', 1472000, 1471226)])
def test_parameter_counts_are_the_reference_ones(name, full, inference):
    trunk = networks.get(name)((32, 32, 3))
    train_model, inference_model = utils.build_models(trunk, (32, 32, 3), 10, True, 0.2)
    assert (train_model.count_params(), inference_model.count_params()) == (full, inference)
    assert all(type(l) is layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
               for l in trunk.layers if isinstance(l, keras.layers.BatchNormalization))


def test_model_file_loads_in_stock_keras_with_the_debiased_statistics(tmp_path):
    import model_io
    trunk = networks.get('convnet')((32, 32, 3), width=0.0625)
    model, inference = utils.build_models(trunk, (32, 32, 3), 10, True, 0.0)
    utils.compile_model(model, 0.0, True)
    rng = np.random.RandomState(0)
    x = rng.normal(0.0, 1.0, (4, 32, 32, 3)).astype(np.float32)
    targets = [np.eye(6, dtype=np.float32)[[0, 1, 2, 3]], np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]]
    model.train_on_batch([x, x], targets)
    path = str(tmp_path / 'model.h5')
    model_io.save_model(path, inference, model_io.Preprocessing.for_dataset(dataset.get('svhn'), None, 0))
    bn = trunk.get_layer('block1_bn')
    count = int(K.get_value(bn.debias.count))
    saved = K.get_value(bn.moving_mean)
    want = inference.predict(x)

    loaded = keras.models.load_model(path)
    loaded_bn = [l for l in loaded.get_layer('convnet_trunk').layers if l.name == 'block1_bn'][0]
    assert type(loaded_bn) is keras.layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
    assert count == 2  # one step, two branches: weights 1 − 0.99 and 0.99·0.01 over 1 − 0.99²
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
    args = ['--data=fashion_mnist', '--dataset=' + tiny_fashion, '--result=' + result,
            '--network=convnet', '--width=0.0625', '--labels=20', '--batch_size=2', '--epochs=1',
            '--max_steps=2']
    entry = os.path.join(ROOT, 'train_evaluate_asl2.py')
    # The run before the change: stock Keras BatchNorm in every trunk.
    earlier = ('import sys; sys.path.insert(0, %r); from compat import keras; '
               'import networks.layers as l; l.BatchNormalization = keras.layers.BatchNormalization; '
               'import train_evaluate_asl2 as e; sys.exit(e.main(sys.argv))' % ROOT)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-c', earlier] + args, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {n: os.path.getmtime(os.path.join(result, n)) for n in os.listdir(result)}

    proc = subprocess.run([sys.executable, entry, '--resume'] + args, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and 'starting from step 0' not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and 'ckpt-2' in lines[0] and 'earlier version' in lines[0], proc.stderr
    assert {n: os.path.getmtime(os.path.join(result, n)) for n in os.listdir(result)} == before
