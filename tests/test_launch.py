"""The ModelZoo launch scripts (test/train_*_1p.sh) and the ModelArts entry (boot_modelarts.py).

Most tests run the scripts with a stand-in interpreter that records the command line it
gets and writes small result files, so that flag handling, the case log and failures are
checked in well under a second each. A few run the real training on tiny data end to end.
"""

import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys
import types

import pytest
from conftest import ROOT, write_cifar10

TEST_DIR = os.path.join(ROOT, 'test')
SCRIPTS = {'full': 'train_full_1p.sh', 'performance': 'train_performance_1p.sh'}
NETWORK = 'SESEMI_ID1270_for_TensorFlow'
FIGURES = ('ActualFPS', 'TrainingTime', 'ActualLoss', 'TrainAccuracy', 'E2ETrainingTime')
# Two epochs of 5 steps on the 20 labeled images of tiny_cifar10 (speed comes from epoch 2).
TINY = ['--network=convnet', '--width=0.0625', '--labels=20', '--batch_size=4', '--epochs=2']
NPU_HELP = (
    '--data_path',
    '--precision_mode',
    '--over_dump',
    '--data_dump_flag',
    '--data_dump_step',
    '--profiling',
    '-h/--help',
)

# Stands in for train_evaluate_asl2.py: records its arguments in $STUB_RECORD, then
# fails ($STUB_EXIT), writes nothing ($STUB_NO_RESULT) or writes $STUB_EPOCHS epochs of
# metrics (speeds 100, 300, 500 images/s; 90, 30, 10 ms/step) and a result.json with
# error_dense 0.25. Any other use of the interpreter (the scripts' figure reader) is
# handed to the real one.
STUB = r"""
import json, os, sys
if len(sys.argv) < 2 or not sys.argv[1].endswith('train_evaluate_asl2.py'):
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
args = sys.argv[2:]
with open(os.environ['STUB_RECORD'], 'w') as f:
    json.dump(args, f)
print('stub training')
if os.environ.get('STUB_EXIT'):
    print('error: stub failure', file=sys.stderr)
    sys.exit(int(os.environ['STUB_EXIT']))
if os.environ.get('STUB_NO_RESULT'):
    sys.exit(0)
opts = dict(a[2:].split('=', 1) for a in args if '=' in a)
result = opts['result']
os.makedirs(result, exist_ok=True)
with open(os.path.join(result, 'args.json'), 'w') as f:
    json.dump({'batch_size': int(opts.get('batch_size', 16))}, f)
rows = [{'epoch': e + 1, 'images_per_sec': 100.0 + 200 * e, 'ms_per_step': 90.0 / 3 ** e,
         'loss': 3.0 - e * 0.75} for e in range(int(os.environ.get('STUB_EPOCHS', '3')))]
rows[-1].update(error_dense=0.25, error_single=0.3)
with open(os.path.join(result, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
with open(os.path.join(result, 'result.json'), 'w') as f:
    json.dump({'error_dense': 0.25, 'error_single': 0.3}, f)
"""


def write_stub(folder, code):
    """Writes an executable ``python`` in ``folder`` that runs ``code`` with this interpreter."""
    folder.mkdir()
    (folder / 'stub.py').write_text(code)
    exe = folder / 'python'
    exe.write_text(
        '#!/bin/sh\nexec %s %s "$@"\n'
        % (shlex.quote(sys.executable), shlex.quote(str(folder / 'stub.py')))
    )
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture
def stub(tmp_path):
    """An executable standing in for the python interpreter; returns (path, record file)."""
    return write_stub(tmp_path / 'stub', STUB), str(tmp_path / 'stub' / 'args.json')


def script_env(tmp_path, python=sys.executable, **extra):
    """The scripts' environment: this interpreter (or the stub), outputs under tmp_path."""
    env = dict(
        os.environ,
        PYTHON=python,
        OUTPUT_ROOT=str(tmp_path / 'output'),
        ASCEND_DEVICE_ID='0',
        CUDA_VISIBLE_DEVICES='',
    )
    env.update(extra)
    return env


def launch(kind, args, env, cwd=ROOT):
    """Runs a launch script by its path relative to ``cwd``."""
    script = os.path.relpath(os.path.join(TEST_DIR, SCRIPTS[kind]), cwd)
    return subprocess.run(
        ['bash', script] + args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_stub(kind, args, tmp_path, stub, **extra):
    """Runs a launch script with the stub; returns (process, argv the stub got or None)."""
    exe, record = stub
    proc = launch(kind, args, script_env(tmp_path, exe, STUB_RECORD=record, **extra))
    argv = None
    if os.path.exists(record):
        with open(record) as f:
            argv = json.load(f)
    return proc, argv


def read_case_log(path):
    with open(path) as f:
        return dict(line.split(' = ', 1) for line in f.read().splitlines())


def read_text(path):
    with open(path) as f:
        return f.read()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def flag_value(argv, name):
    """The value of the last --name=value in argv, or None."""
    values = [a.split('=', 1)[1] for a in argv if a.startswith('--%s=' % name)]
    return values[-1] if values else None


def check_case_log(out, kind, batch_size):
    """Checks the case log in ``out`` and returns its entries."""
    case_name = '%s_bs%d_1p_%s' % (NETWORK, batch_size, 'acc' if kind == 'full' else 'perf')
    case = read_case_log(os.path.join(out, case_name + '.log'))
    assert list(case) == ['Network', 'RankSize', 'BatchSize', 'DeviceType', 'CaseName'] + list(
        FIGURES
    )
    assert case['Network'] == NETWORK and case['RankSize'] == '1'
    assert case['BatchSize'] == str(batch_size) and case['CaseName'] == case_name
    assert case['DeviceType'] == os.uname().machine
    for key in FIGURES:
        assert math.isfinite(float(case[key])), (key, case[key])
    return case


# ------------------------------------------------------------ usage and flag handling


@pytest.mark.parametrize('kind', sorted(SCRIPTS))
@pytest.mark.parametrize('flag', ['-h', '--help'])
def test_help_explains_parameters(kind, flag, tmp_path):
    proc = launch(kind, [flag], script_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert 'parameter explain' in proc.stdout
    for name in NPU_HELP:
        assert name in proc.stdout
    assert not (tmp_path / 'output').exists()


@pytest.mark.parametrize('kind', sorted(SCRIPTS))
def test_missing_data_path_is_refused(kind, tmp_path, stub):
    proc, argv = run_stub(kind, ['--epochs=1'], tmp_path, stub)
    assert proc.returncode == 2 and argv is None
    assert '--data_path is required' in proc.stderr and 'parameter explain' in proc.stderr


@pytest.mark.parametrize(
    'args,words',
    [
        (['--data_path=/x', 'stray'], ["unexpected argument 'stray'"]),
        (['--data_path=/x', '--precision_mode'], ['--precision_mode needs a value']),
        (['--data_path='], ['--data_path needs a value']),
    ],
)
def test_malformed_arguments_are_refused(args, words, tmp_path, stub):
    proc, argv = run_stub('full', args, tmp_path, stub)
    assert proc.returncode == 2 and argv is None
    for word in words:
        assert word in proc.stderr


def test_bad_device_id_is_refused(tmp_path, stub):
    proc, argv = run_stub('full', ['--data_path=/x'], tmp_path, stub, ASCEND_DEVICE_ID='../x')
    assert proc.returncode == 2 and argv is None and 'ASCEND_DEVICE_ID' in proc.stderr


@pytest.mark.parametrize('kind,epochs', [('full', None), ('performance', '3')])
def test_default_flags_and_no_npu_flags(kind, epochs, tmp_path, stub, tiny_cifar10):
    parent = os.path.dirname(tiny_cifar10)
    proc, argv = run_stub(kind, ['--data_path=' + parent], tmp_path, stub)
    assert proc.returncode == 0, proc.stderr
    out = str(tmp_path / 'output' / '0')
    assert flag_value(argv, 'dataset') == tiny_cifar10  # the parent folder was resolved
    assert flag_value(argv, 'data') == 'cifar10' and flag_value(argv, 'network') == 'convnet'
    assert flag_value(argv, 'labels') == '2000' and flag_value(argv, 'mode') == 'asl'
    assert flag_value(argv, 'epochs') == epochs
    assert flag_value(argv, 'result') == os.path.join(out, 'result')
    assert not any(
        a.split('=')[0].lstrip('-')
        in (
            'precision_mode',
            'over_dump',
            'over_dump_path',
            'data_dump_flag',
            'data_dump_path',
            'data_dump_step',
            'profiling',
            'profiling_path',
        )
        for a in argv
    )
    with open(os.path.join(out, 'train_0.log')) as f:
        log = f.read()
    assert log.startswith('Command: ') and 'train_evaluate_asl2.py' in log.splitlines()[0]
    assert 'stub training' in log


def test_npu_flags_are_forwarded_with_output_folders(tmp_path, stub, tiny_cifar10):
    proc, argv = run_stub(
        'performance',
        [
            '--data_path=' + tiny_cifar10,
            '--precision_mode=allow_mix_precision',
            '--over_dump=True',
            '--data_dump_flag=True',
            '--data_dump_step=0|5',
            '--profiling=True',
        ],
        tmp_path,
        stub,
        ASCEND_DEVICE_ID='3',
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / 'output' / '3'
    assert flag_value(argv, 'dataset') == tiny_cifar10
    expected = {
        'precision_mode': 'allow_mix_precision',
        'over_dump': 'True',
        'over_dump_path': str(out / 'overflow_dump'),
        'data_dump_flag': 'True',
        'data_dump_path': str(out / 'data_dump'),
        'data_dump_step': '0|5',
        'profiling': 'True',
        'profiling_path': str(out / 'profiling'),
    }
    for name, value in expected.items():
        assert flag_value(argv, name) == value, name
    for folder in ('overflow_dump', 'data_dump', 'profiling'):
        assert (out / folder).is_dir()
    assert (out / 'train_3.log').is_file()
    assert '--data_dump_step=0\\|5' in (out / 'train_3.log').read_text().splitlines()[0]


def test_other_flags_are_forwarded_and_override_defaults(tmp_path, stub, tiny_cifar10):
    extra = ['--epochs=1', '--labels=1000', '--batch_size=8', '--deterministic', '--seed=5']
    proc, argv = run_stub('performance', ['--data_path=' + tiny_cifar10] + extra, tmp_path, stub)
    assert proc.returncode == 0, proc.stderr
    assert argv[-len(extra) :] == extra
    assert [a for a in argv if a.startswith(('--epochs', '--labels'))] == extra[:2]
    check_case_log(str(tmp_path / 'output' / '0'), 'performance', 8)


def test_case_log_figures_come_from_the_result_files(tmp_path, stub, tiny_cifar10):
    proc, _ = run_stub('full', ['--data_path=' + tiny_cifar10], tmp_path, stub)
    assert proc.returncode == 0, proc.stderr
    case = check_case_log(str(tmp_path / 'output' / '0'), 'full', 16)
    # Speed: the mean of epochs 2 and 3 (epoch 1 includes graph building).
    assert (case['ActualFPS'], case['TrainingTime']) == ('400.00', '20.00')
    assert (case['ActualLoss'], case['TrainAccuracy']) == ('1.5000', '0.7500')
    assert 'TrainAccuracy = 0.7500' in proc.stdout


def test_single_epoch_speed_is_that_epoch(tmp_path, stub, tiny_cifar10):
    proc, _ = run_stub('full', ['--data_path=' + tiny_cifar10], tmp_path, stub, STUB_EPOCHS='1')
    assert proc.returncode == 0, proc.stderr
    case = check_case_log(str(tmp_path / 'output' / '0'), 'full', 16)
    assert (case['ActualFPS'], case['TrainingTime'], case['ActualLoss']) == (
        '100.00',
        '90.00',
        '3.0000',
    )


@pytest.mark.parametrize(
    'env,words',
    [
        ({'STUB_EXIT': '3'}, ['training failed (python exit code 3)', 'error: stub failure']),
        ({'STUB_NO_RESULT': '1'}, ['training wrote no', 'result.json']),
    ],
)
def test_failed_run_exits_non_zero(env, words, tmp_path, stub, tiny_cifar10):
    proc, argv = run_stub('full', ['--data_path=' + tiny_cifar10], tmp_path, stub, **env)
    assert argv is not None and proc.returncode != 0
    out = tmp_path / 'output' / '0'
    assert str(out / 'train_0.log') in proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not [n for n in os.listdir(str(out)) if n.startswith(NETWORK)]


def test_stale_result_of_an_earlier_run_is_not_taken(tmp_path, stub, tiny_cifar10):
    result = tmp_path / 'elsewhere'
    result.mkdir()
    (result / 'result.json').write_text('{"error_dense": 0.5}')
    os.utime(str(result / 'result.json'), (1e9, 1e9))
    proc, argv = run_stub(
        'full',
        ['--data_path=' + tiny_cifar10, '--result=' + str(result)],
        tmp_path,
        stub,
        STUB_NO_RESULT='1',
    )
    assert flag_value(argv, 'result') == str(result)
    assert proc.returncode != 0 and 'training wrote no' in proc.stderr


def test_rerun_resumes_from_the_checkpoints_of_the_earlier_run(tmp_path, stub, tiny_cifar10):
    proc, argv = run_stub('full', ['--data_path=' + tiny_cifar10], tmp_path, stub)
    assert proc.returncode == 0 and '--resume' not in argv
    out = tmp_path / 'output' / '0'
    (out / 'result' / 'checkpoints').mkdir(parents=True)
    (out / 'result' / 'checkpoints' / 'checkpoint').write_text('model_checkpoint_path: "ckpt-3"')
    proc, argv = run_stub('full', ['--data_path=' + tiny_cifar10], tmp_path, stub)
    assert proc.returncode == 0 and argv.count('--resume') == 1
    assert 'Resuming the earlier run in %s' % (out / 'result') in proc.stdout


# ------------------------------------------------------------ real training, tiny data


@pytest.mark.slow
def test_full_script_from_inside_test_folder(tmp_path, tiny_cifar10):
    proc = launch(
        'full',
        ['--data_path=' + tiny_cifar10] + TINY + ['--max_steps=7', '--seed=7'],
        script_env(tmp_path),
        cwd=TEST_DIR,
    )
    out = str(tmp_path / 'output' / '0')
    log = read_text(os.path.join(out, 'train_0.log'))
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    args = read_json(os.path.join(out, 'result', 'args.json'))
    assert (args['max_steps'], args['seed'], args['labels'], args['batch_size']) == (7, 7, 20, 4)
    assert args['dataset'] == tiny_cifar10 and args['mode'] == 'asl'
    result = read_json(os.path.join(out, 'result', 'result.json'))
    assert result['steps'] == 7
    case = check_case_log(out, 'full', 4)
    assert float(case['TrainAccuracy']) == pytest.approx(1 - result['error_dense'], abs=5e-5)
    assert 'Final test error' in log


def test_bad_data_fails_with_the_reason(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = launch('performance', ['--data_path=' + str(empty)] + TINY, script_env(tmp_path))
    assert proc.returncode == 2
    assert 'training failed' in proc.stderr and 'train_0.log' in proc.stderr
    assert "CIFAR-10 folder '%s' has no file 'data_batch_1'" % empty in proc.stderr


# ------------------------------------------------------------ ModelArts


def boot(args, env):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'boot_modelarts.py')] + args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def boot_dirs(tmp_path):
    return [
        '--train_url=' + str(tmp_path / 'obs_out'),
        '--data_cache=' + str(tmp_path / 'cache'),
        '--result_cache=' + str(tmp_path / 'result_cache'),
    ]


def test_modelarts_uploads_outputs_and_dumps(tmp_path, stub):
    exe, record = stub
    env = script_env(tmp_path, exe, STUB_RECORD=record)
    bucket = tmp_path / 'obs_in'
    write_cifar10(str(bucket / 'cifar-10-batches-py'))
    proc = boot(
        ['--data_url=' + str(bucket), '--script=performance', '--epochs=1', '--over_dump=True']
        + boot_dirs(tmp_path),
        env,
    )
    assert proc.returncode == 0, proc.stderr
    argv = read_json(record)
    assert flag_value(argv, 'dataset') == str(tmp_path / 'cache' / 'cifar-10-batches-py')
    assert flag_value(argv, 'epochs') == '1' and flag_value(argv, 'over_dump') == 'True'
    obs = tmp_path / 'obs_out'
    assert sorted(os.listdir(str(obs))) == sorted(
        [NETWORK + '_bs16_1p_perf.log', 'overflow_dump', 'result', 'train_0.log']
    )
    assert read_json(str(obs / 'result' / 'result.json'))['error_dense'] == 0.25


def test_modelarts_uploads_logs_of_a_failed_run(tmp_path, stub, tiny_cifar10):
    exe, record = stub
    env = script_env(tmp_path, exe, STUB_RECORD=record, STUB_EXIT='3')
    proc = boot(['--data_url=' + tiny_cifar10] + boot_dirs(tmp_path), env)
    assert proc.returncode == 3
    assert 'train_full_1p.sh failed with exit code 3' in proc.stderr
    assert 'error: stub failure' in (tmp_path / 'obs_out' / 'train_0.log').read_text()


def test_modelarts_bad_data_url(tmp_path, stub):
    exe, record = stub
    proc = boot(
        ['--data_url=' + str(tmp_path / 'missing')] + boot_dirs(tmp_path),
        script_env(tmp_path, exe, STUB_RECORD=record),
    )
    assert proc.returncode != 0 and 'error: data: cannot copy' in proc.stderr
    assert not os.path.exists(record)


@pytest.mark.slow
def test_modelarts_rehearsal_runs_the_performance_script(tmp_path):
    """Also the real-training check of train_performance_1p.sh: the data folder's parent
    as data_url, an NPU flag and extra flags forwarded, speed from the second epoch."""
    bucket = tmp_path / 'obs_in'
    write_cifar10(str(bucket / 'cifar-10-batches-py'))
    proc = boot(
        [
            '--data_url=' + str(bucket),
            '--script=performance',
            '--precision_mode=must_keep_origin_dtype',
            '--max_steps=6',
        ]
        + TINY
        + boot_dirs(tmp_path),
        script_env(tmp_path),
    )
    obs = tmp_path / 'obs_out'
    assert proc.returncode == 0, proc.stderr + (obs / 'train_0.log').read_text()[-3000:]
    args = read_json(str(obs / 'result' / 'args.json'))
    assert args['precision_mode'] == 'must_keep_origin_dtype' and args['max_steps'] == 6
    assert args['dataset'] == str(tmp_path / 'cache' / 'cifar-10-batches-py')
    with open(str(obs / 'result' / 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [5, 6]
    case = check_case_log(str(obs), 'performance', 4)
    assert float(case['ActualFPS']) == pytest.approx(rows[1]['images_per_sec'], abs=0.006)
    assert float(case['TrainingTime']) == pytest.approx(rows[1]['ms_per_step'], abs=0.006)
    assert float(case['ActualLoss']) == pytest.approx(rows[1]['loss'], abs=5e-5)
    result = read_json(str(obs / 'result' / 'result.json'))
    assert float(case['TrainAccuracy']) == pytest.approx(1 - result['error_dense'], abs=5e-5)


def test_copy_uses_moxing_when_present(tmp_path, monkeypatch):
    import help_modelarts

    calls = []
    fake = types.SimpleNamespace(
        file=types.SimpleNamespace(copy_parallel=lambda src, dst: calls.append((src, dst)))
    )
    monkeypatch.setitem(sys.modules, 'moxing', fake)
    help_modelarts.copy_folder('obs://bucket/data', str(tmp_path / 'cache'))
    assert calls == [('obs://bucket/data', str(tmp_path / 'cache'))]

    def broken(src, dst):
        raise RuntimeError('obs says no')

    fake.file.copy_parallel = broken
    with pytest.raises(help_modelarts.CopyError, match='obs://bucket/data.*obs says no'):
        help_modelarts.copy_folder('obs://bucket/data', str(tmp_path / 'cache'))


def test_copy_keeps_the_traceback_of_an_internal_error(tmp_path, monkeypatch):
    import help_modelarts

    def broken(src, dst):
        raise NameError('an internal error')

    fake = types.SimpleNamespace(file=types.SimpleNamespace(copy_parallel=broken))
    monkeypatch.setitem(sys.modules, 'moxing', fake)
    with pytest.raises(NameError):
        help_modelarts.copy_folder('obs://bucket/data', str(tmp_path / 'cache'))


def test_adapter_import_keeps_the_traceback_of_an_internal_error(monkeypatch):
    import importlib

    from sesemi_tf import npu

    def broken(name):
        raise NameError('an internal error')

    monkeypatch.setattr(importlib, 'import_module', broken)
    with pytest.raises(NameError):
        npu.import_adapter()


def test_adapter_import_of_a_broken_install_is_a_reason(monkeypatch):
    import importlib

    from sesemi_tf import npu

    def missing_library(name):
        raise OSError('libascendcl.so: cannot open shared object file')

    monkeypatch.setattr(importlib, 'import_module', missing_library)
    module, why = npu.import_adapter()
    assert module is None and 'libascendcl.so' in why


def test_copy_without_moxing_takes_local_folders_only(tmp_path, monkeypatch):
    import help_modelarts

    monkeypatch.setitem(sys.modules, 'moxing', None)  # makes `import moxing` fail
    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    (src / 'sub' / 'f.txt').write_text('x')
    dst = tmp_path / 'dst'
    (dst / 'sub').mkdir(parents=True)
    help_modelarts.copy_folder(str(src), str(dst))  # merges into an existing folder
    assert (dst / 'sub' / 'f.txt').read_text() == 'x'
    with pytest.raises(help_modelarts.CopyError, match='moxing SDK is not installed'):
        help_modelarts.copy_folder('obs://bucket/data', str(dst))
    with pytest.raises(help_modelarts.CopyError, match='inside the source'):
        help_modelarts.copy_folder(str(tmp_path), str(tmp_path / 'cache'))


def test_only_help_modelarts_imports_moxing():
    importers = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        for name in files:
            if name.endswith('.py'):
                with open(os.path.join(folder, name)) as f:
                    if re.search(r'^\s*(import|from)\s+moxing\b', f.read(), re.M):
                        importers.append(os.path.relpath(os.path.join(folder, name), ROOT))
    assert importers == ['help_modelarts.py']


def test_malloc_script_preloads_tcmalloc_once_and_keeps_other_preloads():
    installed = sorted(glob.glob('/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4')) + [
        path
        for path in ('/usr/lib64/libtcmalloc_minimal.so.4', '/usr/lib/libtcmalloc_minimal.so.4')
        if os.path.exists(path)
    ]
    script = os.path.join(TEST_DIR, 'malloc.sh')
    env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
    show = 'source %s; source %s; printf %%s "${LD_PRELOAD:-}"' % ((shlex.quote(script),) * 2)
    alone = subprocess.run(
        ['bash', '-c', show], env=env, stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    assert alone == (installed[0] if installed else '')
    # Another library preloaded before stays; sourcing twice adds tcmalloc once.
    env['LD_PRELOAD'] = 'libother.so'
    both = subprocess.run(
        ['bash', '-c', show], env=env, stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    assert both == (installed[0] + ':libother.so' if installed else 'libother.so')
