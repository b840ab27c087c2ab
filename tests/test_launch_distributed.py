"""The launch scripts of data-parallel jobs: test/train_*_8p.sh (Ascend, one process per device
of a rank table) and test/train_multi_worker.sh (local tf.distribute workers).

They run with a stand-in interpreter that records the command line and environment of every
process it stands for, so no TensorFlow is needed and each test takes a few seconds.
"""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import ROOT
from test_launch import NETWORK, TEST_DIR, flag_value, read_case_log, script_env, write_stub

RANKS = 8
# Device of each rank in the rank table of the tests: not the rank itself, so that a script
# taking the device from the rank would be caught.
TABLE_DEVICES = [4, 5, 6, 7, 0, 1, 2, 3]

# Stands in for train_evaluate_asl2.py as rank $RANK_ID or as the worker of $TF_CONFIG:
# records argv, environment and pid in $STUB_DIR/<rank3|worker1>.json and prints its speed.
# $STUB_FAIL=<name>: that one exits 3 once $STUB_COUNT processes have started, and the others
# wait (as in an all-reduce with a dead peer) until stopped; $STUB_FAIL=none: all wait.
# $STUB_IGNORE_TERM: the waiting ones ignore SIGTERM. Otherwise each writes the result files
# the scripts read: epoch 2 at 100 + index images/s and 20 + index ms/step, loss 1 + index / 10.
# Any other use of the interpreter (the scripts' own helpers) is handed to the real one.
STUB = r"""
import json, os, signal, sys, time
if len(sys.argv) < 2 or not sys.argv[1].endswith('train_evaluate_asl2.py'):
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
args = sys.argv[2:]
if 'TF_CONFIG' in os.environ:
    index = json.loads(os.environ['TF_CONFIG'])['task']['index']
    name = 'worker%d' % index
else:
    index = int(os.environ['RANK_ID'])
    name = 'rank%d' % index
folder = os.environ['STUB_DIR']
record = {'argv': args, 'pid': os.getpid(),
          'env': {k: os.environ.get(k) for k in (
    'RANK_ID', 'RANK_SIZE', 'ASCEND_DEVICE_ID', 'RANK_TABLE_FILE', 'TF_CONFIG')}}
with open(os.path.join(folder, name + '.tmp'), 'w') as f:
    json.dump(record, f)
os.rename(os.path.join(folder, name + '.tmp'), os.path.join(folder, name + '.json'))
print('%s: %.1f images/s' % (name, 100.0 + index), flush=True)
fail = os.environ.get('STUB_FAIL')
if fail == name:
    deadline = time.time() + 30
    count = int(os.environ['STUB_COUNT'])
    while len([n for n in os.listdir(folder) if n.endswith('.json')]) < count and (
            time.time() < deadline):
        time.sleep(0.05)
    print('error: stub failure of ' + name, file=sys.stderr)
    sys.exit(3)
if fail:
    if os.environ.get('STUB_IGNORE_TERM'):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(120)
    sys.exit(0)
opts = dict(a[2:].split('=', 1) for a in args if '=' in a)
if 'result' in opts:
    os.makedirs(opts['result'], exist_ok=True)
    rows = [{'epoch': 1, 'images_per_sec': 10.0, 'ms_per_step': 200.0, 'loss': 3.0},
            {'epoch': 2, 'images_per_sec': 100.0 + index, 'ms_per_step': 20.0 + index,
             'loss': 1.0 + index / 10.0}]
    with open(os.path.join(opts['result'], 'metrics.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in rows))
    with open(os.path.join(opts['result'], 'args.json'), 'w') as f:
        json.dump({'batch_size': int(opts.get('batch_size', 16))}, f)
    with open(os.path.join(opts['result'], 'result.json'), 'w') as f:
        json.dump({'error_dense': 0.25 + index / 100.0}, f)
"""


@pytest.fixture
def stub(tmp_path):
    """An executable standing in for the python interpreter; returns (path, record folder).
    Any process it recorded that is still alive at the end is killed (and fails the test)."""
    records = tmp_path / 'records'
    records.mkdir()
    exe = write_stub(tmp_path / 'stub', STUB)
    yield exe, str(records)
    survivors = [r['pid'] for r in load_records(str(records)).values() if alive(r['pid'])]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, 'processes left running: %s' % survivors


def alive(pid):
    """True while the process exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def gone(pids, seconds=5.0):
    """True when none of the processes is alive, waiting up to ``seconds``."""
    deadline = time.time() + seconds
    while any(alive(pid) for pid in pids):
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def load_records(folder):
    """The stub's records by name (rank0..., worker0...)."""
    records = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith('.json'):
            with open(os.path.join(folder, name)) as f:
                records[name[:-5]] = json.load(f)
    return records


def write_rank_table(path, devices=TABLE_DEVICES):
    """A rank table (format 1.0) of one server with a device per rank."""
    table = {
        'version': '1.0',
        'status': 'completed',
        'server_count': '1',
        'server_list': [
            {
                'server_id': '10.0.0.10',
                'host_nic_ip': 'reserve',
                'device': [
                    {
                        'device_id': str(d),
                        'device_ip': '192.168.100.%d' % (101 + d),
                        'rank_id': str(r),
                    }
                    for r, d in enumerate(devices)
                ],
            }
        ],
    }
    path.write_text(json.dumps(table))
    return str(path)


def run(script, args, env, timeout=90):
    return subprocess.run(
        ['bash', os.path.join(TEST_DIR, script)] + args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def env_8p(tmp_path, stub, table=None, **extra):
    exe, records = stub
    if table is None:
        table = write_rank_table(tmp_path / 'rank_table_8p.json')
    extra = dict({'STOP_GRACE_SECONDS': '5', 'RANK_TABLE_FILE': table}, **extra)
    return script_env(tmp_path, exe, STUB_DIR=records, STUB_COUNT=str(RANKS), **extra)


def env_workers(tmp_path, stub, workers, **extra):
    exe, records = stub
    extra = dict({'STOP_GRACE_SECONDS': '5'}, **extra)
    return script_env(tmp_path, exe, STUB_DIR=records, STUB_COUNT=str(workers), **extra)


# ------------------------------------------------------------ Ascend 8p scripts


@pytest.mark.parametrize('kind,case,epochs', [('full', 'acc', None), ('performance', 'perf', '3')])
def test_8p_starts_one_process_per_device_of_the_rank_table(kind, case, epochs, tmp_path, stub):
    env = env_8p(tmp_path, stub)
    proc = run('train_%s_8p.sh' % kind, ['--data_path=/data/cifar', '--seed=5'], env)
    assert proc.returncode == 0, proc.stderr
    records = load_records(stub[1])
    assert sorted(records) == ['rank%d' % r for r in range(RANKS)]
    assert len({r['pid'] for r in records.values()}) == RANKS
    output = tmp_path / 'output'
    for rank in range(RANKS):
        record, device = records['rank%d' % rank], str(TABLE_DEVICES[rank])
        assert record['env'] == {
            'RANK_ID': str(rank),
            'RANK_SIZE': '8',
            'ASCEND_DEVICE_ID': device,
            'RANK_TABLE_FILE': env['RANK_TABLE_FILE'],
            'TF_CONFIG': None,
        }
        argv = record['argv']
        assert flag_value(argv, 'distribute') == 'npu' and flag_value(argv, 'device') == 'npu'
        assert flag_value(argv, 'result') == str(output / device / 'result')
        assert flag_value(argv, 'dataset') == '/data/cifar' and flag_value(argv, 'mode') == 'asl'
        assert flag_value(argv, 'epochs') == epochs and argv[-1] == '--seed=5'
        log = (output / device / ('train_%s.log' % device)).read_text()
        assert log.startswith('Command: ') and 'rank%d: %d.0 images/s' % (rank, 100 + rank) in log
    # One case log, in rank 0's folder: the devices' speeds summed, rank 0's loss and accuracy.
    case_name = '%s_bs16_8p_%s' % (NETWORK, case)
    assert sorted(p.name for p in output.glob('*/%s_*.log' % NETWORK)) == [case_name + '.log']
    log = read_case_log(str(output / '4' / (case_name + '.log')))
    assert log == {
        'Network': NETWORK,
        'RankSize': '8',
        'BatchSize': '16',
        'DeviceType': os.uname().machine,
        'CaseName': case_name,
        'ActualFPS': '%.2f' % sum(100 + r for r in range(RANKS)),
        'TrainingTime': '23.50',
        'ActualLoss': '1.0000',
        'TrainAccuracy': '0.7500',
        'E2ETrainingTime': log['E2ETrainingTime'],
    }
    assert 0 <= int(log['E2ETrainingTime']) < 90
    assert 'ActualFPS = 828.00' in proc.stdout


@pytest.mark.parametrize(
    'name,content',
    [
        ('missing', None),
        ('folder', 'dir'),
        ('not JSON', '{"server_list": ['),
        ('not an object', '[1, 2]'),
        ('no server_list', '{"version": "1.0"}'),
        ('no device list', '{"server_list": [{"server_id": "a"}]}'),
        ('rank_id missing', '{"server_list": [{"device": [{"device_id": "0"}]}]}'),
        (
            'rank_id not a number',
            '{"server_list": [{"device": [{"device_id": "0", "rank_id": "x"}]}]}',
        ),
        ('4 ranks', [0, 1, 2, 3]),
        ('a device twice', [0, 1, 2, 3, 4, 5, 6, 6]),
        ('a rank twice', 'rank twice'),
    ],
)
def test_8p_bad_rank_table_is_one_line_and_starts_nothing(name, content, tmp_path, stub):
    path = tmp_path / 'table.json'
    if content == 'dir':
        path.mkdir()
    elif isinstance(content, list):
        write_rank_table(path, content)
    elif content == 'rank twice':
        write_rank_table(path)
        path.write_text(path.read_text().replace('"rank_id": "7"', '"rank_id": "6"'))
    elif content is not None:
        path.write_text(content)
    proc = run('train_performance_8p.sh', ['--data_path=/x'], env_8p(tmp_path, stub, str(path)))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: rank table %s ' % path), proc.stderr
    assert 'Traceback' not in proc.stderr
    assert load_records(stub[1]) == {} and not (tmp_path / 'output').exists()


def test_8p_rank_table_defaults_to_configs(tmp_path, stub):
    env = env_8p(tmp_path, stub)
    del env['RANK_TABLE_FILE']
    default = os.path.join(ROOT, 'configs', 'rank_table_8p.json')
    if os.path.exists(default):
        pytest.skip('this checkout has a rank table in configs/')
    proc = run('train_full_8p.sh', ['--data_path=/x'], env)
    assert (
        proc.returncode == 2
        and proc.stderr
        == 'error: rank table %s does not exist; set '
        'RANK_TABLE_FILE to the rank table json of this server\n'
        % default
    )
    assert load_records(stub[1]) == {}


@pytest.mark.parametrize(
    'flag', ['--result=/tmp/r', '--ckpt_path=/tmp/c', '--distribute=none', '--device=cpu']
)
def test_8p_refuses_flags_it_sets_per_device(flag, tmp_path, stub):
    proc = run('train_full_8p.sh', ['--data_path=/x', flag], env_8p(tmp_path, stub))
    assert proc.returncode == 2 and load_records(stub[1]) == {}
    assert proc.stderr.startswith(
        'error: %s cannot be given to train_full_8p.sh' % flag.split('=')[0]
    )


def test_8p_help_names_the_rank_table(tmp_path, stub):
    proc = run('train_performance_8p.sh', ['-h'], env_8p(tmp_path, stub))
    assert proc.returncode == 0 and 'parameter explain' in proc.stdout
    assert 'RANK_TABLE_FILE' in proc.stdout and '--distribute=npu --device=npu' in proc.stdout
    assert 'ASCEND_DEVICE_ID         device to train on' not in proc.stdout


@pytest.mark.parametrize('ignore_term', [False, True])
def test_8p_failing_rank_stops_the_others(ignore_term, tmp_path, stub):
    """Rank 3 dies while the others wait for it; with SIGTERM ignored, SIGKILL after the grace."""
    extra = {'STUB_IGNORE_TERM': '1', 'STOP_GRACE_SECONDS': '1'} if ignore_term else {}
    env = env_8p(tmp_path, stub, STUB_FAIL='rank3', **extra)
    begin = time.time()
    proc = run('train_full_8p.sh', ['--data_path=/x'], env)
    assert time.time() - begin < 60
    records = load_records(stub[1])
    assert len(records) == RANKS
    assert gone([r['pid'] for r in records.values()])
    assert proc.returncode == 3
    log = tmp_path / 'output' / '7' / 'train_7.log'
    assert (
        'error: training on device 7 (rank 3) failed (python exit code 3); see %s' % log
        in proc.stderr
    )
    assert 'Stopping the other training processes (7 still running)' in proc.stderr
    assert proc.stderr.rstrip().endswith('error: stub failure of rank3')  # the log's tail
    assert not list((tmp_path / 'output').glob('*/%s_*.log' % NETWORK))


def test_8p_sigterm_to_the_script_stops_every_rank(tmp_path, stub):
    env = env_8p(tmp_path, stub, STUB_FAIL='none')
    proc = subprocess.Popen(
        ['bash', os.path.join(TEST_DIR, 'train_full_8p.sh'), '--data_path=/x'],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    try:
        deadline = time.time() + 60
        while len(load_records(stub[1])) < RANKS and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert 'error: interrupted (SIGTERM)' in stderr
    assert gone([r['pid'] for r in load_records(stub[1]).values()])


def test_8p_rerun_resumes_every_rank_from_rank_0s_checkpoints(tmp_path, stub):
    env = env_8p(tmp_path, stub)
    checkpoints = tmp_path / 'output' / '4' / 'result' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    (checkpoints / 'checkpoint').write_text('model_checkpoint_path: "ckpt-3"')
    proc = run('train_full_8p.sh', ['--data_path=/x'], env)
    assert proc.returncode == 0, proc.stderr
    assert 'Resuming the earlier run in %s' % checkpoints.parent in proc.stdout
    assert all(r['argv'].count('--resume') == 1 for r in load_records(stub[1]).values())


# ------------------------------------------------------------ local multi-worker launcher


@pytest.mark.parametrize('workers', [None, 3])
def test_workers_get_their_tf_config(workers, tmp_path, stub):
    args = ([] if workers is None else ['--workers=%d' % workers]) + ['--dataset=/d', '--seed=2']
    workers = workers or 2
    proc = run('train_multi_worker.sh', args, env_workers(tmp_path, stub, workers))
    assert proc.returncode == 0, proc.stderr
    records = load_records(stub[1])
    assert sorted(records) == ['worker%d' % i for i in range(workers)]
    configs = [json.loads(records['worker%d' % i]['env']['TF_CONFIG']) for i in range(workers)]
    cluster = configs[0]['cluster']
    assert list(cluster) == ['worker'] and len(cluster['worker']) == workers
    hosts, ports = zip(*(address.split(':') for address in cluster['worker']))
    assert set(hosts) == {'127.0.0.1'} and len(set(ports)) == workers
    assert all(0 < int(port) < 65536 for port in ports)
    for i, config in enumerate(configs):
        assert config == {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}
        assert records['worker%d' % i]['argv'] == [
            '--distribute=multi_worker',
            '--dataset=/d',
            '--seed=2',
        ]
        log = tmp_path / 'output' / 'multi_worker' / ('worker_%d.log' % i)
        assert 'worker%d: %d.0 images/s' % (i, 100 + i) in log.read_text()
    assert 'All %d workers finished' % workers in proc.stdout


@pytest.mark.parametrize('ignore_term', [False, True])
def test_failing_worker_stops_the_others(ignore_term, tmp_path, stub):
    extra = {'STUB_IGNORE_TERM': '1', 'STOP_GRACE_SECONDS': '1'} if ignore_term else {}
    env = env_workers(tmp_path, stub, 3, STUB_FAIL='worker1', **extra)
    proc = run('train_multi_worker.sh', ['--workers=3', '--dataset=/d'], env, timeout=60)
    records = load_records(stub[1])
    assert len(records) == 3 and gone([r['pid'] for r in records.values()])
    assert proc.returncode == 3
    log = tmp_path / 'output' / 'multi_worker' / 'worker_1.log'
    assert 'error: worker 1 failed (python exit code 3); see %s' % log in proc.stderr
    assert proc.stderr.rstrip().endswith('error: stub failure of worker1')
    assert 'Killed' not in proc.stderr  # bash's notice of the SIGKILL it sent itself
    assert 'All 3 workers finished' not in proc.stdout


@pytest.mark.parametrize(
    'args,words',
    [
        (['--workers=0'], "--workers must be a whole number from 1, got '0'"),
        (['--workers=two'], "--workers must be a whole number from 1, got 'two'"),
        (['--distribute=mirrored'], '--distribute=mirrored: this script trains with'),
        (['stray'], "unexpected argument 'stray'"),
    ],
)
def test_launcher_bad_arguments(args, words, tmp_path, stub):
    proc = run('train_multi_worker.sh', args, env_workers(tmp_path, stub, 2))
    assert proc.returncode == 2 and proc.stderr.startswith('error: ' + words)
    assert len(proc.stderr.splitlines()) == 1
    assert load_records(stub[1]) == {} and not (tmp_path / 'output').exists()
