"""The device layer (device.py): flag checks, the Ascend adapter's configuration
(checked as data, since no adapter exists here), mixed precision on CPU, and the
CPU debugging aids (overflow report, data dump, profiler trace) end to end."""

import concurrent.futures
import glob
import json
import os
import subprocess
import sys
import types

import pytest
from conftest import ROOT, expect_usage_error, stub_adapter_tf1, write_fashion_mnist

from sesemi_base.errors import UsageError
from sesemi_tf import checks, debug, device, npu
from sesemi_tf.arguments import parse
from sesemi_tf.config import RunConfig
from sesemi_tf.model import lr_schedule

# 40 training images, 20 labeled: 10 steps per epoch (asl), 4 steps in all.
TINY = [
    '--data=fashion_mnist',
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=2',
    '--epochs=1',
    '--max_steps=4',
]


def tf_generation() -> int:
    from sesemi_base.compat import TF1

    return 1 if TF1 else 2


def only_on(generation: int) -> None:
    if tf_generation() != generation:
        pytest.skip('TF %s only' % ('1.15' if generation == 1 else '2.x'))


def run_cli(data, result, *extra):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
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


# The end-to-end runs of this file, longest first. Most of their time is
# TensorFlow's start-up and graph tracing on one core, so two run at a time.
RUNS = {
    'data_dump': ['--data_dump_flag=True', '--data_dump_step=0|2'],
    # Mixed precision needs two epochs to show that the loss goes down; profiling
    # (steps 1-3) rides along, which also shows that the aids work with it.
    'mixed_profiling': [
        '--precision_mode=allow_mix_precision',
        '--epochs=2',
        '--max_steps=20',
        '--profiling=True',
    ],
    'overflow': ['--over_dump=True', '--base_lr=1e30'],
    'npu_dry_run': ['--device=npu', '--dry_run', '--over_dump=True'],
}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Starts the runs of RUNS on tiny Fashion-MNIST files. Maps each name to
    (a future of its CompletedProcess, its result folder)."""
    base = tmp_path_factory.mktemp('device')
    data = write_fashion_mnist(str(base / 'fashion'))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        started = {
            name: (pool.submit(run_cli, data, str(base / name), *flags), str(base / name))
            for name, flags in RUNS.items()
        }
        yield started
        for future, _ in started.values():  # when only some tests ran
            future.cancel()


def finished(runs, name):
    """(CompletedProcess, result folder) of run ``name`` of RUNS."""
    future, result = runs[name]
    return future.result(), result


def own_lines(stderr, prefix='error: '):
    """The program's own lines (TensorFlow's C++ start-up logging may surround them)."""
    assert 'Traceback' not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def npu_cfg(**changes):
    """A resolved configuration as configure() sees it, NPU defaults, no dumps."""
    cfg = dict(
        device='npu',
        over_dump_path='/r/overflow_dump',
        data_dump_path='/r/data_dump',
        profiling_path='/r/profiling',
    )
    cfg.update(changes)
    return RunConfig(**cfg)


# ------------------------------------------------------------------ flags


def test_defaults_resolve_the_folders_under_result(tmp_path):
    result = str(tmp_path / 'r')
    cfg = parse(['train_evaluate_asl2.py', '--result=' + result])[0]
    assert (cfg.device, cfg.precision_mode, cfg.data_dump_step) == ('auto', '', '10')
    assert not (cfg.over_dump or cfg.data_dump_flag or cfg.profiling)
    assert cfg.over_dump_path == os.path.join(result, 'overflow_dump')
    assert cfg.data_dump_path == os.path.join(result, 'data_dump')
    assert cfg.profiling_path == os.path.join(result, 'profiling')
    assert not os.path.exists(result)  # folders are made only for the aids that are on


def test_enabled_aid_gets_its_folder(tmp_path):
    folder = str(tmp_path / 'prof' / 'here')
    cfg = parse(
        ['x', '--result=' + str(tmp_path / 'r'), '--profiling', '--profiling_path=' + folder]
    )[0]
    assert cfg.profiling_path == folder and os.path.isdir(folder)


@pytest.mark.parametrize(
    'text,steps',
    [('0|5|10', [0, 5, 10]), ('0|3-5|10', [0, 3, 4, 5, 10]), (' 2 | 2 ', [2]), ('7-7', [7])],
)
def test_parse_dump_steps(text, steps):
    assert checks.parse_dump_steps(text) == steps


@pytest.mark.parametrize(
    'argv,words',
    [
        (['--precision_mode=fp8'], ['fp8', 'allow_mix_precision', 'must_keep_origin_dtype']),
        (['--over_dump', '--data_dump_flag'], ['--over_dump', '--data_dump_flag']),
        (['--data_dump_step=0|x'], ['--data_dump_step', '0|3-5|10']),
        (['--data_dump_step=5-3'], ['--data_dump_step']),
        (['--data_dump_step='], ['--data_dump_step']),
        (['--device=tpu'], ['device', 'tpu']),
        (['--device=npu'], ['--device=npu', 'npu_bridge', 'npu_device']),
    ],
)
def test_bad_device_flags(capsys, tmp_path, argv, words):
    expect_usage_error(capsys, ['--result=' + str(tmp_path / 'r')] + argv, *words)


def test_dump_folder_that_cannot_be_made(capsys, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    for flag in ('over_dump', 'data_dump', 'profiling'):
        switch = '--data_dump_flag' if flag == 'data_dump' else '--' + flag
        expect_usage_error(
            capsys,
            ['--result=' + str(tmp_path / 'r'), switch, '--%s_path=%s' % (flag, blocker / 'x')],
            flag + '_path',
            'writable',
        )
    # A dry run writes nothing but checks the same.
    expect_usage_error(
        capsys,
        [
            '--result=' + str(tmp_path / 'r'),
            '--dry_run',
            '--profiling',
            '--profiling_path=' + str(blocker / 'x'),
        ],
        'profiling_path',
    )


def test_cli_reports_bad_device_flag_in_one_line(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'train_evaluate_asl2.py'),
            '--result=' + str(tmp_path / 'r'),
            '--precision_mode=half',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1
    assert proc.stderr.startswith('error: unknown --precision_mode=half')


def test_npu_without_adapter_stops_before_training(tiny_fashion, tmp_path):
    proc = run_cli(tiny_fashion, str(tmp_path / 'r'), '--device=npu')
    assert proc.returncode == 2
    assert len(own_lines(proc.stderr)) == 1 and 'Ascend CANN TensorFlow adapter' in proc.stderr
    assert not os.path.exists(str(tmp_path / 'r'))


# ------------------------------------------------------------- precision


@pytest.mark.parametrize(
    'device_name,mode,tf1,expected',
    [
        ('cpu', '', False, 'float32'),
        ('cpu', 'allow_mix_precision', False, 'mixed_bfloat16'),
        ('cpu', 'force_fp16', False, 'mixed_bfloat16'),
        ('cpu', 'force_fp32', False, 'float32'),
        ('cpu', 'must_keep_origin_dtype', False, 'float32'),
        ('gpu', 'allow_fp32_to_fp16', False, 'mixed_float16'),
        ('cpu', 'allow_mix_precision', True, 'float32'),
        ('gpu', 'allow_mix_precision', True, 'mixed_float16'),
        ('gpu', 'cube_fp16in_fp32out', True, 'float32'),
        ('npu', '', True, 'allow_fp32_to_fp16'),
        ('npu', 'force_fp32', False, 'force_fp32'),
    ],
)
def test_resolve_precision(device_name, mode, tf1, expected):
    assert device.resolve_precision(device_name, mode, tf1) == expected


@pytest.mark.parametrize('native', [True, False])
def test_emulated_bfloat16_is_honoured_with_one_warning(monkeypatch, capsys, native):
    if tf_generation() == 1:
        pytest.skip('TF 1.15 has no bfloat16 policy: allow_mix_precision trains in float32 on CPU')
    from sesemi_base.compat import keras

    monkeypatch.setattr(device, 'bfloat16_is_native', lambda: native)
    cfg = npu_cfg(device='cpu', precision_mode='allow_mix_precision')
    try:
        resolved = device.configure(cfg)
        assert (resolved.device, resolved.precision) == ('cpu', 'mixed_bfloat16')
        assert keras.mixed_precision.global_policy().name == 'mixed_bfloat16'
    finally:
        keras.mixed_precision.set_global_policy('float32')
    warnings = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')
    ]
    assert len(warnings) == (0 if native else 1)
    if warnings:
        assert 'bfloat16' in warnings[0] and 'emulated' in warnings[0]


def test_bfloat16_query_answers():
    assert device.bfloat16_is_native() in (True, False)


def test_gpu_asked_without_a_gpu():
    with pytest.raises(UsageError, match='--device=gpu'):
        device.configure(npu_cfg(device='gpu'))


def test_mixed_precision_on_cpu(runs):
    proc, result = finished(runs, 'mixed_profiling')
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = read_json(os.path.join(result, 'args.json'))
    assert args['device'] == 'cpu' and args['precision_mode'] == 'allow_mix_precision'
    warnings = own_lines(proc.stderr, 'warning: --precision_mode')
    if tf_generation() == 1:
        assert args['precision'] == 'float32'
        assert len(warnings) == 1 and 'float32' in warnings[0]
        return
    assert args['precision'] == 'mixed_bfloat16' and not warnings
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        losses = [json.loads(line)['loss'] for line in f]
    assert len(losses) == 2 and all(abs(x) < 100 for x in losses)  # finite
    assert losses[1] < losses[0]  # it still learns in bfloat16


# ------------------------------------------------------ debugging on CPU


def test_overflow_check_reports_the_op(runs):
    proc, result = finished(runs, 'overflow')
    assert proc.returncode == debug.OVERFLOW_EXIT_CODE, proc.stderr[-3000:]
    errors = own_lines(proc.stderr)
    assert len(errors) == 1 and 'Inf/NaN' in errors[0], proc.stderr[-3000:]
    with open(os.path.join(result, 'overflow_dump', 'overflow_report.txt')) as f:
        report = f.read().splitlines()
    assert report[0].startswith('First Inf/NaN in training step ')
    step = int(report[0].split()[-1])
    op_name, op_type = report[1][len('op: ') :], report[2][len('op type: ') :]
    assert op_name != 'unknown' and op_type != 'unknown'
    assert 'op %s (%s) at step %d' % (op_name, op_type, step) in errors[0]
    assert op_name in '\n'.join(report[3:])  # TensorFlow's own account names the same op
    assert not os.path.exists(os.path.join(result, 'model.h5'))


def test_data_dump_of_the_named_steps_only(runs):
    proc, result = finished(runs, 'data_dump')
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = os.path.join(result, 'data_dump')
    assert sorted(os.listdir(folder)) == ['step_0', 'step_2']
    for step in ('step_0', 'step_2'):
        if tf_generation() == 1:  # tfdbg writes one core-metadata file per session run
            runs = glob.glob(os.path.join(folder, step, '_tfdbg_core_metadata_*'))
            tensors = glob.glob(
                os.path.join(folder, step, '_tfdbg_device_*', '**', '*_DebugIdentity_*'),
                recursive=True,
            )
        else:
            from tensorflow.python.debug.lib import debug_events_reader

            with debug_events_reader.DebugDataReader(os.path.join(folder, step)) as reader:
                reader.update()
                runs = [e for e in reader.executions() if 'train_function' in e.op_type]
                tensors = reader.graph_execution_traces()
        assert len(runs) == 1, (step, runs)
        assert len(tensors) > 100, step


def test_profiling_leaves_a_trace(runs):
    proc, result = finished(runs, 'mixed_profiling')
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = os.path.join(result, 'profiling')
    if tf_generation() == 2:
        traces = glob.glob(os.path.join(folder, 'plugins', 'profile', '*', '*.xplane.pb'))
        assert len(traces) == 1 and os.path.getsize(traces[0]) > 10000
        return
    timelines = sorted(glob.glob(os.path.join(folder, 'timeline_step_*.json')))
    assert [os.path.basename(t) for t in timelines] == [
        'timeline_step_%d.json' % s for s in (1, 2, 3)
    ]
    events = read_json(timelines[0])['traceEvents']
    assert any('Conv2D' in str(e.get('args', {}).get('name', e.get('name'))) for e in events)
    assert glob.glob(os.path.join(folder, 'events.out.tfevents.*'))


# ------------------------------------------------- Ascend adapter settings


@pytest.mark.parametrize(
    'changes,expected',
    [
        ({}, {'precision_mode': ('s', b'allow_fp32_to_fp16')}),
        (
            {
                'precision_mode': 'allow_mix_precision',
                'data_dump_flag': True,
                'data_dump_step': '0|3-5',
            },
            {
                'precision_mode': ('s', b'allow_mix_precision'),
                'enable_dump': ('b', True),
                'dump_path': ('s', b'/r/data_dump'),
                'dump_step': ('s', b'0|3-5'),
                'dump_mode': ('s', b'output'),
            },
        ),
        (
            {'precision_mode': 'must_keep_origin_dtype', 'over_dump': True},
            {
                'precision_mode': ('s', b'must_keep_origin_dtype'),
                'enable_dump_debug': ('b', True),
                'dump_path': ('s', b'/r/overflow_dump'),
                'dump_debug_mode': ('s', b'all'),
            },
        ),
        (
            {'profiling': True},
            {'precision_mode': ('s', b'allow_fp32_to_fp16'), 'profiling_mode': ('b', True)},
        ),
    ],
)
def test_npu_session_config(changes, expected):
    only_on(1)
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    config = npu.npu_session_config(npu_cfg(**changes))
    rewrite = config.graph_options.rewrite_options
    assert rewrite.remapping == RewriterConfig.OFF
    assert rewrite.memory_optimization == RewriterConfig.OFF
    assert [o.name for o in rewrite.custom_optimizers] == ['NpuOptimizer']
    params = rewrite.custom_optimizers[0].parameter_map
    expected = dict(expected, use_off_line=('b', True), mix_compile_mode=('b', False))
    if changes.get('profiling'):
        kind = params['profiling_options'].WhichOneof('value')
        options = json.loads(params['profiling_options'].s.decode())
        assert kind == 's' and options == {
            'output': '/r/profiling',
            'training_trace': 'on',
            'task_trace': 'on',
            'aicpu': 'on',
            'fp_point': '',
            'bp_point': '',
            'aic_metrics': 'PipeUtilization',
        }
        expected['profiling_options'] = ('s', params['profiling_options'].s)
    got = {
        key: (value.WhichOneof('value'), getattr(value, value.WhichOneof('value')))
        for key, value in params.items()
    }
    assert got == expected


class FakeNpuDevice(types.ModuleType):
    """Stands in for TF 2's npu_device module: records what is set, and when it is opened."""

    def __init__(self):
        super().__init__('npu_device')
        self.options = types.SimpleNamespace(
            precision_mode=None,
            dump_config=types.SimpleNamespace(
                enable_dump=False,
                dump_path=None,
                dump_step=None,
                dump_mode=None,
                enable_dump_debug=False,
                dump_debug_mode=None,
            ),
            profiling_config=types.SimpleNamespace(enable_profiling=False, profiling_options=None),
        )
        self.events = []
        self.train = types.SimpleNamespace(
            optimizer=types.SimpleNamespace(
                NpuLossScaleOptimizer=lambda opt, dynamic: ('scaled', opt, dynamic)
            )
        )

    def global_options(self):
        return self.options

    def open(self):
        self.events.append(('open', self.options.precision_mode))
        return types.SimpleNamespace(as_default=lambda: self.events.append(('as_default',)))


def test_npu_device_options_through_configure(monkeypatch):
    only_on(2)
    fake = FakeNpuDevice()
    monkeypatch.setitem(sys.modules, 'npu_device', fake)
    cfg = npu_cfg(
        device='auto', precision_mode='allow_mix_precision', over_dump=True, profiling=True
    )
    resolved = device.configure(cfg)
    assert (resolved.device, resolved.precision) == ('npu', 'allow_mix_precision')
    assert fake.events == [('open', 'allow_mix_precision'), ('as_default',)]  # set, then opened
    dump, prof = fake.options.dump_config, fake.options.profiling_config
    assert (dump.enable_dump_debug, dump.dump_path, dump.dump_debug_mode) == (
        True,
        '/r/overflow_dump',
        'all',
    )
    assert not dump.enable_dump and dump.dump_step is None
    assert prof.enable_profiling and json.loads(prof.profiling_options)['output'] == '/r/profiling'
    assert device.optimizer_wrapper(resolved)('sgd') == ('scaled', 'sgd', True)
    assert debug.callbacks(resolved) == []  # the adapter dumps and profiles by itself


def test_npu_data_dump_options_seam():
    fake = FakeNpuDevice()
    npu.open_npu(fake, npu.npu_options(npu_cfg(data_dump_flag=True, data_dump_step='0|5')))
    dump = fake.options.dump_config
    assert fake.options.precision_mode == 'allow_fp32_to_fp16'
    assert (dump.enable_dump, dump.dump_path, dump.dump_step, dump.dump_mode) == (
        True,
        '/r/data_dump',
        '0|5',
        'output',
    )
    assert not dump.enable_dump_debug and not fake.options.profiling_config.enable_profiling
    assert fake.events == [('open', 'allow_fp32_to_fp16'), ('as_default',)]


def test_npu_loss_scaling_tf1_wraps_a_v1_optimizer(monkeypatch):
    only_on(1)
    import numpy as np

    from sesemi_base.compat import K, keras, tf

    made = {}

    def manager(**kwargs):
        made['manager'] = kwargs
        return 'manager'

    def loss_scale_optimizer(opt, loss_scale_manager):
        made['optimizer'] = (opt, loss_scale_manager)
        return opt

    stub_adapter_tf1(monkeypatch, loss_scale_optimizer, manager)
    K.clear_session()
    try:
        wrap = device.optimizer_wrapper(npu_cfg(precision='allow_mix_precision'))
        model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
        schedule = lr_schedule(0.1, 4, 1.0)
        model.compile(wrap(keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)), 'mse')
        rng = np.random.RandomState(0)
        x, y = rng.rand(8, 3), rng.rand(8, 1)
        first = model.evaluate(x, y, verbose=0)
        model.fit(x, y, batch_size=8, epochs=3, verbose=0)
        assert model.evaluate(x, y, verbose=0) < first
        assert K.get_value(model.optimizer.iterations) == 3
        momentum, manager_made = made['optimizer']
        assert (
            isinstance(momentum, tf.compat.v1.train.MomentumOptimizer) and manager_made == 'manager'
        )
        assert momentum._use_nesterov and momentum._momentum == pytest.approx(0.9)
        # The learning rate follows the schedule on Keras' step counter: 0.1·(1 − 3/4) now.
        assert K.get_value(momentum._learning_rate()) == pytest.approx(0.025)
        assert made['manager'] == npu.NPU_LOSS_SCALE
    finally:
        K.clear_session()


def test_npu_dry_run_prints_the_config_without_adapter(runs):
    proc, result = finished(runs, 'npu_dry_run')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Ascend adapter missing' in proc.stdout and 'Device: npu' in proc.stdout
    if tf_generation() == 1:
        for text in (
            'name: "NpuOptimizer"',
            'key: "use_off_line"',
            'key: "enable_dump_debug"',
            's: "allow_fp32_to_fp16"',
        ):
            assert text in proc.stdout
    else:
        for text in (
            "precision_mode = 'allow_fp32_to_fp16'",
            'dump_config.enable_dump_debug = True',
            "dump_config.dump_debug_mode = 'all'",
        ):
            assert text in proc.stdout
    assert not os.path.exists(result)


def test_freed_memory_is_kept_on_glibc():
    import platform

    from sesemi_base import compat

    assert compat.keep_freed_memory() == (platform.libc_ver()[0] == 'glibc')
