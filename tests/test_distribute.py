"""Data-parallel training (distribute.py): the flag checks, mirrored training over two
logical CPU devices against one device (same weights with --sync_bn), exact resume under
the strategy, and the Ascend HCCL wiring checked through stand-ins for the adapter."""

import concurrent.futures
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from conftest import ROOT, expect_usage_error, stub_adapter_tf1, write_noise_fashion_mnist

from sesemi_base.errors import UsageError
from sesemi_base.files import read_metrics
from sesemi_tf import checkpoints, checks, device, parallel
from sesemi_tf.config import RunConfig
from sesemi_tf.model import lr_schedule
from sesemi_tf.plan import make_plan
from sesemi_tf.results import check_resumable

# 40 training images, 20 labeled (asl pool = labeled): 5 steps per epoch at batch 4, 4 steps.
# At the default --base_lr=0.05 this 1/16-width network amplifies the two runs' round-off
# differences (about 1e-6 after two steps) to 1e-2 by the fourth step; at 0.005 much less.
TINY = [
    '--data=fashion_mnist',
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=4',
    '--epochs=1',
    '--max_steps=4',
    '--super_dropout=0',
    '--deterministic',
    '--base_lr=0.005',
]
MIRRORED = ['--distribute=mirrored', '--cpu_replicas=2']


def tf1() -> bool:
    from sesemi_base.compat import TF1

    return TF1


def run_cli(data, result, *extra, fault=None):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    env.pop(checkpoints.FAULT_ENV, None)
    if fault:
        env[checkpoints.FAULT_ENV] = fault
    command = (
        [
            sys.executable,
            os.path.join(ROOT, 'train_evaluate_asl2.py'),
            '--dataset=' + data,
            '--result=' + result,
        ]
        + TINY
        + list(extra)
    )
    return subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# ------------------------------------------------------------------ flags


@pytest.mark.parametrize(
    'argv,words',
    [
        (['--distribute=npu'], ['--distribute=npu', '--device=npu']),
        (['--distribute=mirrored', '--device=npu'], ['--distribute=npu']),
        (['--cpu_replicas=2'], ['--cpu_replicas=2', '--distribute=mirrored']),
        (['--distribute=mirrored', '--cpu_replicas=2', '--device=gpu'], ['--device=gpu']),
        (['--sync_bn'], ['--sync_bn', '--distribute']),
        (['--scale_batch'], ['--scale_batch', '--distribute']),
        (
            ['--distribute=mirrored', '--cpu_replicas=3', '--batch_size=16'],
            ['--batch_size=16', '3 replicas', '--scale_batch'],
        ),
        (['--distribute=mirrored', '--cpu_replicas=2', '--xla=on'], ['--xla=on', 'mirrored']),
        (['--distribute=unknown'], ['--distribute']),
    ],
)
def test_bad_distribute_flags(capsys, tiny_fashion, argv, words):
    if tf1() and '--distribute=mirrored' in argv and '--device=npu' not in argv:
        words = ['TensorFlow 2']  # refused first, whatever else is wrong
    expect_usage_error(
        capsys,
        ['--data=fashion_mnist', '--dataset=' + tiny_fashion, '--labels=20', '--dry_run'] + argv,
        *words,
    )


def test_multi_worker_needs_a_worker_tf_config(capsys, tiny_fashion, monkeypatch):
    base = [
        '--data=fashion_mnist',
        '--dataset=' + tiny_fashion,
        '--labels=20',
        '--dry_run',
        '--distribute=multi_worker',
    ]
    monkeypatch.delenv('TF_CONFIG', raising=False)
    if tf1():
        expect_usage_error(capsys, base, 'TensorFlow 2')
        return
    expect_usage_error(capsys, base, 'TF_CONFIG', 'none', 'test/train_multi_worker.sh')
    for bad in (
        'not json',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
        '{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
    ):
        monkeypatch.setenv('TF_CONFIG', bad)
        expect_usage_error(capsys, base, 'TF_CONFIG')
    monkeypatch.setenv('TF_CONFIG', tf_config([1, 2, 3], 2))
    assert checks.cluster_task() == (2, 3)
    expect_usage_error(
        capsys, base + ['--device=cpu', '--batch_size=16'], '--batch_size=16', '3 replicas'
    )
    expect_usage_error(capsys, base + ['--xla=on'], '--xla=on', 'multi_worker')
    expect_usage_error(capsys, base + ['--cpu_replicas=2'], '--cpu_replicas=2')


def test_npu_rank_environment(capsys, tiny_fashion, monkeypatch):
    base = [
        '--data=fashion_mnist',
        '--dataset=' + tiny_fashion,
        '--labels=20',
        '--device=npu',
        '--distribute=npu',
        '--dry_run',
    ]
    monkeypatch.setenv('RANK_SIZE', '8')
    monkeypatch.setenv('RANK_ID', '8')
    expect_usage_error(capsys, base, 'RANK_ID', "RANK_SIZE='8'")
    monkeypatch.setenv('RANK_ID', '3')
    expect_usage_error(capsys, base + ['--batch_size=12'], '--batch_size=12', '8 replicas')
    expect_usage_error(capsys, base + ['--sync_bn'], '--sync_bn', 'synchronised')


def test_mirrored_and_sync_bn_are_refused_on_tf1(capsys, tiny_fashion):
    if not tf1():
        pytest.skip('TF 1.15 only')
    expect_usage_error(
        capsys,
        ['--data=fashion_mnist', '--dataset=' + tiny_fashion, '--labels=20', '--dry_run']
        + MIRRORED
        + ['--sync_bn'],
        'TensorFlow 2',
    )


def test_scaled_batch_and_learning_rate():
    cfg = RunConfig(batch_size=16, base_lr=0.05, epochs=1)
    steps = make_plan(cfg, pool=640, replicas=4)
    assert (steps.batch_size, steps.base_lr, steps.steps_per_epoch) == (16, 0.05, 40)
    steps = make_plan(dataclasses.replace(cfg, scale_batch=True), pool=640, replicas=4)
    assert (steps.batch_size, steps.base_lr, steps.steps_per_epoch) == (64, 0.2, 10)


def test_resume_refuses_other_data_parallel_settings():
    saved = {'batch_size': 4, 'replicas': 2, 'sync_bn': True, 'scale_batch': False}
    keys = ('batch_size', 'replicas', 'sync_bn', 'scale_batch')
    check_resumable(saved, RunConfig(**saved), keys)
    with pytest.raises(UsageError, match='replicas 1.*--sync_bn=False'):
        check_resumable(saved, RunConfig(**dict(saved, replicas=1, sync_bn=False)), keys)
    # A run saved before these settings existed ran on one device, per-device statistics.
    check_resumable({'batch_size': 4}, RunConfig(batch_size=4), keys)


# ------------------------------------------------------- mirrored, end to end


def load_weights(path):
    """(weights, their names) of a model file."""
    from sesemi_base.compat import K, keras

    K.clear_session()
    model = keras.models.load_model(path, compile=False)
    weights, names = model.get_weights(), [w.name for w in model.weights]
    K.clear_session()
    return weights, names


def differences(weights, names, reference):
    """(max over tensors of max|w − r| / max|r|, max|w − r| of the BatchNorm offsets,
    max|w − r| of the convolution biases). The last two are compared absolutely: BatchNorm
    removes a bias in front of it, so its gradient is round-off alone (it stays about
    1e-9 from zero), and an offset followed by another convolution and BatchNorm has a
    gradient that is a small sum of large, nearly cancelling terms."""
    relative, offsets, biases = [0.0], [0.0], [0.0]
    for w, name, r in zip(weights, names, reference):
        difference = float(np.max(np.abs(w - r)))
        if 'conv/bias' in name:
            biases.append(difference)
        elif 'beta' in name:
            offsets.append(difference)
        else:
            relative.append(difference / float(np.max(np.abs(r))))
    return max(relative), max(offsets), max(biases)


@pytest.fixture(scope='module')
def mirrored_runs(tmp_path_factory):
    """Runs 4 steps at global batch 4 on one device and under MirroredStrategy over 2 CPU
    devices (with and without --sync_bn), and a mirrored run killed after its step-2
    checkpoint then resumed. Maps each name to (CompletedProcess, result folder)."""
    if tf1():
        pytest.skip('TF 2 only (TF 1.15 refuses --distribute=mirrored)')
    base = tmp_path_factory.mktemp('mirrored')
    data = write_noise_fashion_mnist(str(base / 'fashion'))
    runs = {'single': [], 'sync': MIRRORED + ['--sync_bn'], 'per_replica': MIRRORED}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        started = {
            name: pool.submit(run_cli, data, str(base / name), *flags)
            for name, flags in runs.items()
        }
        resumed = str(base / 'resumed')
        killed = pool.submit(
            run_cli, data, resumed, '--ckpt_every_steps=2', '--sync_bn', *MIRRORED, fault='step:3'
        ).result()
        done = {name: (future.result(), str(base / name)) for name, future in started.items()}
    done['killed'] = (killed, resumed)
    done['resumed'] = (
        run_cli(data, resumed, '--ckpt_every_steps=2', '--sync_bn', '--resume', *MIRRORED),
        resumed,
    )
    return done


@pytest.mark.slow
def test_mirrored_sync_bn_gives_the_single_device_weights(mirrored_runs):
    for name in ('single', 'sync', 'per_replica'):
        proc, _ = mirrored_runs[name]
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    single, names = load_weights(os.path.join(mirrored_runs['single'][1], 'model.h5'))
    sync, _ = load_weights(os.path.join(mirrored_runs['sync'][1], 'model.h5'))
    per_replica, _ = load_weights(os.path.join(mirrored_runs['per_replica'][1], 'model.h5'))
    sync_difference = differences(sync, names, single)
    per_replica_difference = differences(per_replica, names, single)
    print(
        '\nto one device after 4 steps (max relative; BatchNorm offsets, conv biases absolute): '
        '--sync_bn %.3g; %.3g, %.3g. per-replica BatchNorm %.3g; %.3g, %.3g'
        % (sync_difference + per_replica_difference)
    )
    relative, offsets, biases = sync_difference
    assert relative < 1e-3 and offsets < 1e-4 and biases < 1e-7
    # Per-replica statistics (12 labeled images, 12 proxy views per replica) train another model.
    assert per_replica_difference[0] > 10 * relative
    assert per_replica_difference[1] > 10 * offsets
    assert all(np.all(np.isfinite(w)) for w in per_replica)
    proc, result = mirrored_runs['sync']
    assert '2 replicas, global batch 4 (2 per replica)' in proc.stdout
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    assert (final['steps'], final['replicas'], final['distribute']) == (4, 2, 'mirrored')
    assert 0.0 <= final['error_dense'] <= 1.0
    with open(os.path.join(result, 'args.json')) as f:
        args = json.load(f)
    assert (args['replicas'], args['sync_bn'], args['device']) == (2, True, 'cpu')


@pytest.mark.slow
def test_mirrored_run_resumes_exactly(mirrored_runs):
    killed, result = mirrored_runs['killed']
    assert killed.returncode < 0, killed.stderr[-3000:]  # SIGKILL at step 3
    proc, _ = mirrored_runs['resumed']
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming from' in proc.stdout and 'at step 2' in proc.stdout
    with open(os.path.join(result, 'result.json')) as f:
        assert json.load(f)['steps'] == 4
    resumed, _ = load_weights(os.path.join(result, 'model.h5'))
    whole, _ = load_weights(os.path.join(mirrored_runs['sync'][1], 'model.h5'))
    for a, b in zip(resumed, whole):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------- multi_worker, end to end


def tf_config(ports, index):
    return json.dumps(
        {
            'cluster': {'worker': ['127.0.0.1:%d' % p for p in ports]},
            'task': {'type': 'worker', 'index': index},
        }
    )


def free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(data, result, *extra, fault=None, logs=None):
    """Starts the two workers of a multi-worker job on loopback; returns their Popens
    (output to ``logs``/worker_<i>.log)."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CONFIG=tf_config(ports, index))
        env.pop(checkpoints.FAULT_ENV, None)
        if fault:
            env[checkpoints.FAULT_ENV] = fault
        log = open(os.path.join(logs, 'worker_%d.log' % index), 'w')  # noqa: SIM115 (the child writes)
        command = (
            [
                sys.executable,
                os.path.join(ROOT, 'train_evaluate_asl2.py'),
                '--dataset=' + data,
                '--result=' + result,
                '--distribute=multi_worker',
            ]
            + TINY
            + list(extra)
        )
        workers.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                universal_newlines=True,
            )
        )
        log.close()
    return workers


def finish(workers, logs, timeout=300):
    """Waits for the workers; returns (exit codes, their logs)."""
    codes = [w.wait(timeout=timeout) for w in workers]
    texts = []
    for index in range(len(workers)):
        with open(os.path.join(logs, 'worker_%d.log' % index)) as f:
            texts.append(f.read())
    return codes, texts


def launch(data, result, logs, *extra, fault=None):
    """test/train_multi_worker.sh with 2 workers; (CompletedProcess, worker logs)."""
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES='',
        OUTPUT_ROOT=logs,
        PYTHON=sys.executable,
        STOP_GRACE_SECONDS='10',
    )
    env.pop(checkpoints.FAULT_ENV, None)
    if fault:
        env[checkpoints.FAULT_ENV] = fault
    proc = subprocess.run(
        [
            'bash',
            os.path.join(ROOT, 'test', 'train_multi_worker.sh'),
            '--workers=2',
            '--dataset=' + data,
            '--result=' + result,
        ]
        + TINY
        + list(extra),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    texts = []
    for index in range(2):
        with open(os.path.join(logs, 'multi_worker', 'worker_%d.log' % index)) as f:
            texts.append(f.read())
    return proc, texts


def wait_for(path, text, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            if text in f.read():
                return
        time.sleep(0.2)
    raise AssertionError('%r did not appear in %s' % (text, path))


@pytest.fixture(scope='module')
def multi_worker_data(tmp_path_factory):
    if tf1():
        pytest.skip('TF 2 only (TF 1.15 refuses --distribute=multi_worker)')
    base = tmp_path_factory.mktemp('multi_worker')
    return write_noise_fashion_mnist(str(base / 'fashion')), base


@pytest.mark.slow
def test_multi_worker_trains_checkpoints_and_resumes_after_a_killed_worker(multi_worker_data):
    data, base = multi_worker_data
    whole, killed = str(base / 'whole'), str(base / 'killed')
    # The whole run, through the local launcher.
    proc, (chief, other) = launch(data, whole, str(base / 'logs_whole'), '--ckpt_every_steps=2')
    assert proc.returncode == 0, proc.stderr + chief[-3000:] + other[-3000:]
    assert 'Data parallel (multi_worker): 2 replicas, global batch 4 (2 per replica)' in chief
    with open(os.path.join(whole, 'result.json')) as f:
        final = json.load(f)
    assert (final['steps'], final['replicas'], final['distribute']) == (4, 2, 'multi_worker')
    assert sorted(os.listdir(os.path.join(whole, 'checkpoints'))) == [
        'checkpoint',
        'ckpt-2.data-00000-of-00001',
        'ckpt-2.index',
        'ckpt-4.data-00000-of-00001',
        'ckpt-4.index',
    ]  # the other worker's copies are gone
    assert len(read_metrics(os.path.join(whole, 'metrics.jsonl'))) == 1  # one writer
    assert 'the chief writes the results' in other
    # Worker 1 dies after step 3 (its step-2 checkpoint written): the launcher stops the job.
    proc, (chief, other) = launch(
        data, killed, str(base / 'logs_killed'), '--ckpt_every_steps=2', fault='step:3:1'
    )
    assert proc.returncode != 0
    assert 'worker 1 failed' in proc.stderr and 'last lines of' in proc.stderr
    assert not os.path.exists(os.path.join(killed, 'result.json'))
    # Both workers again with --resume: on from step 2 to the planned 4.
    proc, (chief, other) = launch(
        data, killed, str(base / 'logs_resumed'), '--ckpt_every_steps=2', '--resume'
    )
    assert proc.returncode == 0, proc.stderr + chief[-3000:] + other[-3000:]
    for text in (chief, other):
        assert 'Resuming from %s at step 2' % os.path.join(killed, 'checkpoints', 'ckpt-2') in text
    with open(os.path.join(killed, 'result.json')) as f:
        assert json.load(f)['steps'] == 4
    resumed, names = load_weights(os.path.join(killed, 'model.h5'))
    reference, _ = load_weights(os.path.join(whole, 'model.h5'))
    for w, r, name in zip(resumed, reference, names):
        if 'moving_' in name:
            # A checkpoint holds the replicas' mean statistics; each replica goes on from it.
            np.testing.assert_allclose(w, r, rtol=0, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(w, r, err_msg=name)


@pytest.mark.slow
def test_multi_worker_dead_peer_stops_the_other_worker(multi_worker_data):
    """Without a launcher to stop it: the survivor's next collective fails and it exits
    with one line and exit code 4 instead of waiting."""
    data, base = multi_worker_data
    logs = str(base / 'logs_dead_peer')
    os.makedirs(logs)
    workers = start_workers(
        data, str(base / 'dead_peer'), '--ckpt_every_steps=2', fault='step:3:1', logs=logs
    )
    (chief_code, other_code), (chief, _) = finish(workers, logs, timeout=300)
    assert other_code == -signal.SIGKILL
    assert chief_code == parallel.EXIT_PEER_FAILED, chief[-3000:]
    assert 'error: another worker of the job failed or stopped at step' in chief
    assert 'start every worker again with --resume' in chief


@pytest.mark.slow
def test_multi_worker_sigterm_to_one_worker_stops_both_at_one_step(multi_worker_data):
    data, base = multi_worker_data
    logs, result = str(base / 'logs_term'), str(base / 'term')
    os.makedirs(logs)
    workers = start_workers(
        data, result, '--epochs=40', '--max_steps=200', '--log_every_seconds=1', logs=logs
    )
    wait_for(os.path.join(logs, 'worker_1.log'), 'ETA')  # training
    workers[1].send_signal(signal.SIGTERM)
    codes, texts = finish(workers, logs)
    assert codes == [128 + signal.SIGTERM] * 2, texts[0][-2000:] + texts[1][-2000:]
    stopped = [int(text.split('Interrupted at step ')[1].split(';')[0]) for text in texts]
    assert stopped[0] == stopped[1] < 200
    assert os.path.exists(os.path.join(result, 'checkpoints', 'ckpt-%d.index' % stopped[0]))
    assert not os.path.exists(os.path.join(result, 'checkpoints', 'worker_1_temp'))


# ------------------------------------------- Ascend HCCL, through stand-ins


def npu_rank_cfg(monkeypatch, rank=3, size=8, **changes):
    """Rank 3 of 8, as test/train_full_8p.sh starts it; a resolved NPU configuration."""
    monkeypatch.setenv('RANK_ID', str(rank))
    monkeypatch.setenv('RANK_SIZE', str(size))
    cfg = dict(device='npu', distribute='npu', precision='allow_fp32_to_fp16', batch_size=16)
    cfg.update(changes)
    return RunConfig(**cfg)


def test_npu_rank_feeds_its_slice_of_every_step(monkeypatch):
    data_parallel = parallel.configure(npu_rank_cfg(monkeypatch), adapter=types.ModuleType('stub'))
    assert (data_parallel.replicas, data_parallel.parts) == (8, [3])
    assert data_parallel.dataset(lambda parts, n_parts: (parts, n_parts)) == ([3], 8)
    alone = parallel.configure(npu_rank_cfg(monkeypatch, 0, 1, batch_size=3), adapter=object())
    assert alone.replicas == 1 and alone.all_reduce_wrapper() is None and alone.callbacks() == []
    with pytest.raises(UsageError, match='--batch_size=12 cannot be split across 8'):
        parallel.configure(npu_rank_cfg(monkeypatch, batch_size=12), adapter=object())


class FakeNpuDevice(types.ModuleType):
    """Stands in for TF 2's npu_device: records the collectives it is asked for."""

    def __init__(self):
        super().__init__('npu_device')
        self.calls = []

        def all_reduce(values, reduction):
            self.calls.append(('all_reduce', len(values), reduction))
            return [v * 0.5 for v in values]  # as if the other ranks had zero gradients

        def broadcast(variables, root_rank):
            self.calls.append(('broadcast', len(variables), root_rank))

        self.distribute = types.SimpleNamespace(all_reduce=all_reduce, broadcast=broadcast)
        self.train = types.SimpleNamespace(
            optimizer=types.SimpleNamespace(
                NpuLossScaleOptimizer=lambda opt, dynamic: ('scaled', opt, dynamic)
            )
        )


def test_npu_hccl_wiring_tf2(monkeypatch):
    if tf1():
        pytest.skip('TF 2 only')
    from sesemi_base.compat import keras, tf

    npu = FakeNpuDevice()
    monkeypatch.setitem(sys.modules, 'npu_device', npu)
    cfg = npu_rank_cfg(monkeypatch, precision='allow_mix_precision')
    data_parallel = parallel.configure(cfg, adapter=npu)
    # Mixed precision: the adapter's loss-scale optimizer around the all-reducing SGD.
    kind, sgd, dynamic = device.optimizer_wrapper(cfg, data_parallel.all_reduce_wrapper())(
        keras.optimizers.SGD(0.1)
    )
    assert (kind, dynamic) == ('scaled', True)
    weight = tf.Variable([1.0, 1.0])
    sgd.apply_gradients([(tf.constant([1.0, 2.0]), weight)])
    np.testing.assert_allclose(weight.numpy(), [0.95, 0.9])  # the averaged gradient was applied
    assert npu.calls == [('all_reduce', 1, 'mean')]
    # float32 modes: the all-reducing SGD itself.
    plain = device.optimizer_wrapper(
        dataclasses.replace(cfg, precision='allow_fp32_to_fp16'), data_parallel.all_reduce_wrapper()
    )(keras.optimizers.SGD(0.1))
    assert isinstance(plain, keras.optimizers.SGD)
    # Rank 0's weights everywhere before the first step, once.
    (callback,) = data_parallel.callbacks()
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_begin()
    assert npu.calls[1:] == [('broadcast', 2, 0)]


def test_npu_hccl_wiring_tf1(monkeypatch):
    if not tf1():
        pytest.skip('TF 1.15 only')
    from sesemi_base.compat import K, keras, tf

    made = {}

    def wrapper(optimizer):
        made.setdefault('all_reduce', []).append(optimizer)
        return optimizer

    def loss_scale_optimizer(opt, loss_scale_manager, is_distributed=False):
        made['loss_scale'] = (opt, is_distributed)
        return opt

    class Broadcast(keras.callbacks.Callback):
        def __init__(self, root_rank):
            super().__init__()
            self.root_rank = root_rank

    adapter = stub_adapter_tf1(
        monkeypatch,
        loss_scale_optimizer,
        npu_distributed_optimizer_wrapper=wrapper,
        NPUBroadcastGlobalVariablesCallback=Broadcast,
    )
    K.clear_session()
    try:
        cfg = npu_rank_cfg(monkeypatch, precision='allow_mix_precision')
        data_parallel = parallel.configure(cfg, adapter=adapter)
        wrap = device.optimizer_wrapper(cfg, data_parallel.all_reduce_wrapper())
        wrap(keras.optimizers.SGD(lr_schedule(0.1, 4, 1.0), momentum=0.9, nesterov=True))
        (momentum,) = made['all_reduce']
        assert isinstance(momentum, tf.compat.v1.train.MomentumOptimizer)
        assert made['loss_scale'] == (momentum, True)  # the ranks agree on overflows
        sgd = keras.optimizers.SGD(0.1)
        assert (
            device.optimizer_wrapper(
                dataclasses.replace(cfg, precision='allow_fp32_to_fp16'),
                data_parallel.all_reduce_wrapper(),
            )(sgd)
            is sgd
        )
        assert made['all_reduce'][1] is sgd
        (callback,) = data_parallel.callbacks()
        assert isinstance(callback, Broadcast) and callback.root_rank == 0
    finally:
        K.clear_session()
