"""Fuzzing the files a run reads back and its environment: args.json, metrics.jsonl and the
checkpoint state file read on --resume, the checkpoints themselves, split.json read by
evaluate.py, the rank table the 8p scripts parse in bash, TF_CONFIG and RANK_ID/RANK_SIZE;
plus a sample of damaged files given to the training entry."""

import json
import os
import shutil
import subprocess
import tempfile
from unittest import mock

import numpy as np
import pytest
from conftest import ROOT, write_fashion_mnist
from fuzzing import (
    STRICT,
    SUBPROCESS_CASES,
    Refused,
    assert_refused,
    budget,
    check,
    damaged_bytes,
    damaged_json,
    json_text,
    json_values,
    make_folder,
    run_tool,
    snapshot,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

import dataset
import evaluate
from sesemi_base.errors import UsageError
from sesemi_base.files import read_metrics
from sesemi_tf import checks, config, results

pytestmark = STRICT

ARGS = config.to_json(config.RunConfig(data='fashion_mnist', labels=20, batch_size=4))
METRICS = ''.join(
    json.dumps({'epoch': 1, 'step': s, 'loss': 1.5, 'error_dense': 0.5}) + '\n' for s in (5, 10)
)
STATE = (
    'model_checkpoint_path: "ckpt-10"\n'
    'all_model_checkpoint_paths: "ckpt-5"\n'
    'all_model_checkpoint_paths: "ckpt-10"\n'
    'all_model_checkpoint_timestamps: 1700000000.125\n'
    'all_model_checkpoint_timestamps: 1700000100.5\n'
    'last_preserved_timestamp: 1699999999.25\n'
)


def result_folder(tmp, args=ARGS, metrics=METRICS, state=STATE):
    """A result folder of an earlier run: args.json, metrics.jsonl, checkpoints/checkpoint."""
    result = os.path.join(tmp, 'result')
    os.makedirs(os.path.join(result, 'checkpoints'))
    for name, text in (
        ('args.json', json.dumps(args)),
        ('metrics.jsonl', metrics),
        (os.path.join('checkpoints', 'checkpoint'), state),
    ):
        write(os.path.join(result, name), text.encode() if isinstance(text, str) else text)
    return result


def resume_config(result):
    return config.RunConfig(
        data='fashion_mnist',
        labels=20,
        batch_size=4,
        result=result,
        ckpt_path=os.path.join(result, 'checkpoints'),
        resume=True,
    )


def check_resume(result, damaged):
    """The checks of --resume before TensorFlow on a folder with the file ``damaged``."""
    before = snapshot(result)
    outcome = check(lambda: results.check_folder(resume_config(result)), [damaged])
    assert snapshot(result) == before
    return outcome


# ---------------------------------------------------------------------- args.json


@budget(40)
@given(data=st.data())
def test_fuzz_args_json(data):
    with tempfile.TemporaryDirectory() as tmp:
        result = result_folder(tmp)
        path = os.path.join(result, 'args.json')
        if data.draw(st.booleans(), 'structured'):
            write(path, json_text(data.draw(damaged_json(ARGS))).encode())
        else:
            write(path, data.draw(damaged_bytes(json.dumps(ARGS).encode())))
        check_resume(result, path)


# ------------------------------------------------------------------ metrics.jsonl


def valid_rows(rows):
    assert isinstance(rows, list)
    for row in rows:
        assert isinstance(row, dict) and type(row['step']) is int and row['step'] >= 0


@budget(40)
@given(data=st.data())
def test_fuzz_metrics_jsonl(data):
    with tempfile.TemporaryDirectory() as tmp:
        result = result_folder(tmp)
        path = os.path.join(result, 'metrics.jsonl')
        if data.draw(st.booleans(), 'a damaged row'):
            row = data.draw(damaged_json({'epoch': 1, 'step': 5, 'loss': 1.5}))
            raw = (json_text(row) + '\n' + METRICS.splitlines(True)[1]).encode()
        else:
            raw = data.draw(damaged_bytes(METRICS.encode()))
        write(path, raw)
        rows = check(lambda: read_metrics(path), [path])
        if not isinstance(rows, Refused):
            valid_rows(rows)
        check_resume(result, path)
        # Without --resume, any earlier metrics stop a fresh start over them.
        cfg = resume_config(result)
        shutil.rmtree(os.path.join(result, 'checkpoints'))
        fresh = check(
            lambda: results.check_folder(cfg.__class__(**dict(vars(cfg), resume=False))), [result]
        )
        assert isinstance(fresh, Refused) or not raw


# ------------------------------------------------------------ checkpoint state file


@budget(40)
@given(data=st.data())
def test_fuzz_checkpoint_state_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        result = result_folder(tmp)
        path = os.path.join(result, 'checkpoints', 'checkpoint')
        write(path, data.draw(damaged_bytes(STATE.encode(), head=40)))
        outcome = check_resume(result, path)
        if not isinstance(outcome, Refused):
            from sesemi_base.compat import tf

            # What the check lets through, TensorFlow reads as a state with a checkpoint.
            state = tf.train.get_checkpoint_state(os.path.dirname(path))
            assert state is not None and state.model_checkpoint_path


@pytest.mark.parametrize('name', ['args.json', 'metrics.jsonl', 'checkpoints/checkpoint'])
def test_a_folder_in_place_of_a_run_file_is_refused(tmp_path, name):
    result = result_folder(str(tmp_path))
    make_folder(os.path.join(result, name))
    assert isinstance(check_resume(result, os.path.join(result, name)), Refused)


# ------------------------------------------------------------------- checkpoints


@pytest.fixture(scope='module')
def saved_checkpoints(tmp_path_factory):
    """A tiny compiled model and a folder holding its checkpoints of steps 5 and 10."""
    import networks
    from sesemi_base.compat import K
    from sesemi_tf.checkpoints import Checkpoints
    from sesemi_tf.model import build_models, compile_model

    K.clear_session()
    trunk = networks.get('convnet')((32, 32, 1), width=0.0625)
    model, _ = build_models(trunk, (32, 32, 1), 10, False, 0.0)
    compile_model(model, 0.01, False)
    folder = str(tmp_path_factory.mktemp('checkpoints') / 'checkpoints')
    ckpts = Checkpoints(folder, model, keep=3)
    ckpts.restore_newest()
    for step in (5, 10):
        ckpts.save(step)
    return model, folder


@budget(25)
@given(data=st.data())
def test_fuzz_checkpoints(saved_checkpoints, data):
    from sesemi_tf.checkpoints import Checkpoints

    model, source = saved_checkpoints
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, 'checkpoints')
        shutil.copytree(source, folder)
        names = sorted(n for n in os.listdir(folder) if n.startswith('ckpt-'))
        damaged = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        for name in damaged:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                raw = f.read()
            if data.draw(st.booleans(), 'remove %s' % name):
                os.remove(path)
            else:
                write(path, data.draw(damaged_bytes(raw, head=256), name))
        warnings = []
        restored = check(
            lambda: Checkpoints(folder, model, keep=3).restore_newest(warn=warnings.append),
            [folder],
        )
        if not isinstance(restored, Refused):
            assert restored in (os.path.join(folder, 'ckpt-10'), os.path.join(folder, 'ckpt-5'))
        assert all('\n' not in line for line in warnings)


def test_an_internal_error_while_restoring_is_not_taken_for_a_broken_checkpoint(
    saved_checkpoints, monkeypatch
):
    # Only what a broken file raises is skipped: a bug keeps its traceback.
    from sesemi_tf import checkpoints

    model, folder = saved_checkpoints

    def broken(*args):
        raise NameError('an internal error')

    monkeypatch.setattr(checkpoints, 'restore_checkpoint', broken)
    with pytest.raises(NameError):
        checkpoints.Checkpoints(folder, model, keep=3).restore_newest(warn=lambda text: None)


# -------------------------------------------------------------------- split.json

CLASSES = ('a', 'b')


@pytest.fixture(scope='module')
def held_out_folder(tmp_path_factory):
    """An image folder without test/ and the split.json of a run that held 4 files out."""
    from PIL import Image

    root = str(tmp_path_factory.mktemp('split') / 'root')
    files = []
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, 'labeled', name))
        for i in range(3):
            path = os.path.join('labeled', name, '%d.png' % i)
            Image.fromarray(np.full((8, 8, 3), 40 * i + label, np.uint8)).save(
                os.path.join(root, path)
            )
            files.append([path, label])
    split = {
        'root': root,
        'class_names': list(CLASSES),
        'image_size': 8,
        'test_source': 'held_out',
        'test_files': files[::2],
        'train_files': [p for p, _ in files[1::2]],
        'unlabeled_images': 0,
        'labeled_indices': [0, 1],
    }
    return root, split


@budget(40)
@given(data=st.data())
def test_fuzz_split_json(held_out_folder, data):
    root, split = held_out_folder
    with tempfile.TemporaryDirectory() as tmp:
        model, path = os.path.join(tmp, 'model.h5'), os.path.join(tmp, 'split.json')
        if data.draw(st.booleans(), 'structured'):
            write(path, json_text(data.draw(damaged_json(split))).encode())
        else:
            write(path, data.draw(damaged_bytes(json.dumps(split).encode())))

        def read():
            return dataset.load_test('folder', None, evaluate.read_split(model), (8, 8, 3), CLASSES)

        result = check(read, [path, 'split.json', root])
    if not isinstance(result, Refused):
        x, y = result
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 3) and len(x) == len(y) > 0
        assert y.dtype == np.int64 and ((y >= 0) & (y < len(CLASSES))).all()


# -------------------------------------------------------------------- rank table

RANK_TABLE = {
    'version': '1.0',
    'server_count': '1',
    'server_list': [
        {
            'server_id': '10.0.0.1',
            'device': [
                {'device_id': str(d), 'device_ip': '192.168.0.%d' % d, 'rank_id': str(d)}
                for d in range(4)
            ],
        }
    ],
    'status': 'completed',
}


def read_rank_table(path, size=4):
    """The 8p scripts' reader (test/common.sh) on ``path``: (exit code, stdout, stderr)."""
    import sys

    proc = subprocess.run(
        [
            'bash',
            '-c',
            'source test/common.sh && sesemi_read_rank_table "$0" "$1"',
            path,
            str(size),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc


@budget(40)
@given(data=st.data())
def test_fuzz_rank_table(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'rank_table_4p.json')
        if data.draw(st.booleans(), 'structured'):
            write(path, json_text(data.draw(damaged_json(RANK_TABLE))).encode())
        else:
            write(path, data.draw(damaged_bytes(json.dumps(RANK_TABLE).encode())))
        proc = read_rank_table(path)
    if proc.returncode == 0:
        pairs = [line.split() for line in proc.stdout.splitlines()]
        assert [int(r) for r, _ in pairs] == [0, 1, 2, 3] and proc.stderr == ''
        assert len({int(d) for _, d in pairs}) == 4
    else:
        assert_refused(proc, [path])


@pytest.mark.parametrize('case', ['missing', 'folder'])
def test_rank_table_missing_or_a_folder_is_refused(tmp_path, case):
    path = str(tmp_path / 'rank_table_4p.json')
    if case == 'folder':
        os.makedirs(path)
    assert_refused(read_rank_table(path), [path])


# --------------------------------------------------------------------- TF_CONFIG

CLUSTER = {
    'cluster': {'worker': ['localhost:1', 'localhost:2']},
    'task': {'type': 'worker', 'index': 1},
}


@budget(60)
@given(data=st.data())
def test_fuzz_tf_config(data):
    kind = data.draw(st.sampled_from(['structured', 'bytes', 'text']))
    if kind == 'structured':
        text = json_text(data.draw(damaged_json(CLUSTER)))
    elif kind == 'bytes':
        text = data.draw(damaged_bytes(json.dumps(CLUSTER).encode())).decode('utf-8', 'replace')
    else:
        text = data.draw(st.text(max_size=50))
    text = text.replace('\0', '')  # an environment variable cannot hold NUL
    with mock.patch.dict(os.environ, {'TF_CONFIG': text}):
        outcome = check(checks.cluster_task, ['TF_CONFIG'])
    if not isinstance(outcome, Refused):
        index, count = outcome
        assert type(index) is int and type(count) is int and 0 <= index < count


@budget(40)
@given(
    rank=json_values.map(str) | st.text(max_size=8), size=json_values.map(str) | st.text(max_size=8)
)
def test_fuzz_rank_environment(rank, size):
    environment = {'RANK_ID': rank.replace('\0', ''), 'RANK_SIZE': size.replace('\0', '')}
    with mock.patch.dict(os.environ, environment):
        outcome = check(checks.npu_rank, ['RANK_ID'])
    if not isinstance(outcome, Refused):
        index, count = outcome
        assert 0 <= index < count


# --------------------------------------------------------------- the training entry

ENTRY_CASES = [
    ('args.json', b'{"data": "fashion_mnist", "batch_size": '),
    ('metrics.jsonl', METRICS.encode()[:20] + b'\xff\n' + METRICS.encode()),
    (os.path.join('checkpoints', 'checkpoint'), STATE.encode()[:30] + b'\n'),
]


@pytest.mark.parametrize('case', range(SUBPROCESS_CASES))
def test_training_entry_refuses_a_damaged_run_file_on_resume(tmp_path, case):
    from sesemi_tf import arguments

    name, raw = ENTRY_CASES[case]
    data = write_fashion_mnist(str(tmp_path / 'fashion'))
    result = str(tmp_path / 'result')
    argv = [
        'train_evaluate_asl2.py',
        '--data=fashion_mnist',
        '--dataset=' + data,
        '--labels=20',
        '--batch_size=4',
        '--result=' + result,
        '--resume',
    ]
    cfg, _ = arguments.parse(argv)
    result = result_folder(str(tmp_path), args=config.to_json(cfg))
    write(os.path.join(result, name), raw)
    before = snapshot(result)
    proc = run_tool(argv)
    assert_refused(proc, [os.path.join(result, name)])
    assert snapshot(result) == before


@pytest.mark.skipif(
    checks.tf1_installed(), reason='TF 1.15 refuses --distribute=multi_worker before TF_CONFIG'
)
@pytest.mark.parametrize('case', range(SUBPROCESS_CASES))
def test_training_entry_refuses_a_damaged_tf_config(tmp_path, case):
    text = ['', '{"cluster": {"worker": []}}', '[' * 100000][case]
    data = write_fashion_mnist(str(tmp_path / 'fashion'))
    proc = run_tool(
        [
            'train_evaluate_asl2.py',
            '--data=fashion_mnist',
            '--dataset=' + data,
            '--distribute=multi_worker',
            '--device=cpu',
            '--dry_run',
        ],
        env={'TF_CONFIG': text},
    )
    assert_refused(proc, ['TF_CONFIG'])


def test_usage_error_of_the_damage_helpers_is_one_line():
    # The contract's own check: a two-line message is not accepted.
    with pytest.raises(AssertionError):
        check(lambda: (_ for _ in ()).throw(UsageError('a\nb')), ['a'])
