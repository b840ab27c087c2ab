"""Regression tests of the run files' readers, one per failure the fuzz tests found (or
review of them): the minimal damaged file, and the one-line error it must give."""

import json
import os
import subprocess
import sys
from unittest import mock

import pytest
from conftest import ROOT

import evaluate
from sesemi_base.errors import UsageError
from sesemi_base.files import read_metrics
from sesemi_tf import checks, config, model_io, results


def one_line(call, *words):
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert '\n' not in message, message
    for word in words:
        assert word in message, message
    return message


def run_folder(tmp_path, **files):
    result = tmp_path / 'result'
    (result / 'checkpoints').mkdir(parents=True)
    for name, text in files.items():
        (result / name.replace('__', '/')).write_text(text)
    return config.RunConfig(result=str(result), ckpt_path=str(result / 'checkpoints'), resume=True)


# ----------------------------------------------------------------- metrics.jsonl


@pytest.mark.parametrize(
    'text, words',
    [
        ('[' * 100000 + '\n', ['line 1', 'recursion']),  # RecursionError
        ('{"epoch": 1}\n', ['line 1', 'integer step']),  # KeyError: 'step'
        ('[5]\n', ['line 1']),  # TypeError
        ('{"step": "5"}\n', ['line 1']),  # TypeError on resume: '<=' of str and int
        ('{"step": 5}\n\xff\n{"step": 6}\n', ['line 2']),  # UnicodeDecodeError
    ],
)
def test_metrics_line_that_is_not_a_row_is_one_line_naming_the_file(tmp_path, text, words):
    path = tmp_path / 'metrics.jsonl'
    path.write_bytes(text.encode('utf-8', 'surrogateescape').replace(b'\xc3\xbf', b'\xff'))
    one_line(lambda: read_metrics(str(path)), str(path), *words)


def test_metrics_cut_last_line_is_dropped_but_still_an_earlier_run(tmp_path):
    cfg = run_folder(tmp_path, **{'metrics.jsonl': '{"step": 5}\n{"st'})
    assert read_metrics(os.path.join(cfg.result, 'metrics.jsonl')) == [{'step': 5}]
    cfg = run_folder(tmp_path / 'cut', **{'metrics.jsonl': '{"st'})
    fresh = config.RunConfig(result=cfg.result, ckpt_path=cfg.ckpt_path, resume=False)
    # Found by fuzzing: a file of one cut line read as no run, and a fresh start replaced it.
    one_line(lambda: results.check_folder(fresh), 'earlier run', 'metrics.jsonl')


# --------------------------------------------------------------------- args.json


def test_args_json_value_with_a_line_break_gives_one_line_naming_the_file(tmp_path):
    # Found by fuzzing: the saved value was printed as it was (two lines), and the
    # message did not name args.json.
    saved = dict(config.to_json(config.RunConfig()), mode='asl\nsesemi')
    cfg = run_folder(tmp_path, **{'args.json': json.dumps(saved)})
    one_line(lambda: results.check_folder(cfg), 'args.json', '(saved: asl sesemi)')


def test_args_json_nested_too_deeply_is_one_line(tmp_path):
    cfg = run_folder(tmp_path, **{'args.json': '[' * 100000})
    one_line(lambda: results.check_folder(cfg), 'args.json', 'nested too deeply')


# -------------------------------------------------------- checkpoint state file


@pytest.mark.parametrize(
    'text, why',
    [
        ('model_checkpoint_path: "ckpt-10', 'line 1'),  # read by TensorFlow as no checkpoint
        ('', 'names no newest checkpoint'),  # TensorFlow: ValueError
        ('model_checkpoint_path: "ckpt-1\xff"\n', 'utf-8'),  # TensorFlow: UnicodeDecodeError
    ],
)
def test_damaged_checkpoint_state_file_is_refused_before_tensorflow(tmp_path, text, why):
    # Found by fuzzing: TensorFlow raised inside CheckpointManager, or read the file as no
    # checkpoint, and the resumed run started afresh over the earlier one.
    cfg = run_folder(tmp_path)
    path = os.path.join(cfg.ckpt_path, 'checkpoint')
    with open(path, 'wb') as f:
        f.write(text.encode('utf-8').replace(b'\xc3\xbf', b'\xff'))
    one_line(lambda: results.check_folder(cfg), path, why)


def test_checkpoint_state_as_tensorflow_writes_it_is_accepted(tmp_path):
    cfg = run_folder(tmp_path)
    with open(os.path.join(cfg.ckpt_path, 'checkpoint'), 'w') as f:
        f.write(
            'model_checkpoint_path: "/a/b \\303\\251/ckpt-10"\n'
            'all_model_checkpoint_paths: "/a/b \\303\\251/ckpt-10"\n'
            'all_model_checkpoint_timestamps: 1.7e+09\n'
            'last_preserved_timestamp: 1699999999.25\n'
        )
    results.check_folder(cfg)


# -------------------------------------------------------------------- split.json


@pytest.mark.parametrize(
    'split',
    [
        {'root': 1, 'test_source': 'held_out'},  # os.path.isdir(1) checks file descriptor 1
        {'test_source': 'held_out', 'test_files': [1]},  # TypeError when unpacked
        {'test_source': 'held_out', 'test_files': [['a.png', 'x']]},  # ValueError of int()
        {'test_source': 'held_out', 'test_files': {'a.png': 0}},
        '[' * 100000,  # RecursionError
    ],
)
def test_split_json_that_is_not_a_split_is_one_line(tmp_path, split):
    # Found by fuzzing split.json.
    path = tmp_path / 'split.json'
    path.write_text(split if isinstance(split, str) else json.dumps(split))
    one_line(lambda: evaluate.read_split(str(tmp_path / 'model.h5')), str(path))


def test_split_json_test_file_of_a_class_the_model_lacks_is_refused(tmp_path):
    # Found by fuzzing: the label was used as it was, so errors were counted against a
    # class the model does not have.
    from dataset import folder_images

    (tmp_path / 'root').mkdir()
    split = {'test_source': 'held_out', 'test_files': [['labeled/a/1.png', 5]]}
    one_line(
        lambda: folder_images.load_test(str(tmp_path / 'root'), split, (8, 8, 3), ('a', 'b')),
        'split.json',
        'class 5',
    )


def test_args_json_batch_size_infinite_or_zero_is_one_line_for_precise_bn(tmp_path):
    # Review of the fuzzed args.json: int(1e400) raised OverflowError in read_run.
    prep = model_io.Preprocessing('folder', 2, (8, 8, 3), ('a', 'b'), False, 0, resize='crop')
    for text in ('{"batch_size": 1e400, "seed": 1}', '{"batch_size": 0, "seed": 1}'):
        (tmp_path / 'args.json').write_text(text)
        one_line(lambda: evaluate.read_run(str(tmp_path / 'model.h5'), None, prep), 'args.json')


# --------------------------------------------------------------------- TF_CONFIG


@pytest.mark.parametrize(
    'text',
    [
        '[' * 100000,  # RecursionError
        '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": true}}',
    ],
)
def test_tf_config_nested_too_deeply_or_a_boolean_index_is_one_line(text):
    # Found by fuzzing TF_CONFIG (the deep nesting); a boolean index passed as worker 1.
    with mock.patch.dict(os.environ, {'TF_CONFIG': text}):
        one_line(checks.cluster_task, 'TF_CONFIG')


# -------------------------------------------------------------------- rank table


@pytest.mark.parametrize(
    'table',
    [
        '[' * 100000,  # RecursionError
        json.dumps(
            {'server_list': [{'device': [{'rank_id': '\u00b2', 'device_id': '0'}]}]}
        ),  # '²'.isdigit() but int('²') raises ValueError
    ],
)
def test_rank_table_nested_too_deeply_or_with_a_superscript_digit_is_one_line(tmp_path, table):
    path = tmp_path / 'rank_table_1p.json'
    path.write_text(table)
    proc = subprocess.run(
        ['bash', '-c', 'source test/common.sh && sesemi_read_rank_table "$0" 1', str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.count('\n') == 1 and str(path) in proc.stderr, proc.stderr


def test_rank_environment_with_a_line_break_is_one_line():
    # Found by the long fuzz run: RANK_ID='\n' was printed as it was (two lines).
    with mock.patch.dict(os.environ, {'RANK_ID': '\n', 'RANK_SIZE': '1'}):
        one_line(checks.npu_rank, "RANK_ID='\\n'")


def test_split_json_root_that_does_not_exist_is_named_as_the_split_files(tmp_path):
    # Found by the long fuzz run: the message named the folder but not split.json.
    import dataset

    split = {'root': str(tmp_path / 'gone'), 'test_source': 'held_out'}
    one_line(lambda: dataset.load_test('folder', None, split, (8, 8, 3), ('a', 'b')), 'split.json')


def test_image_too_elongated_to_crop_is_a_bad_file(tmp_path):
    # Found by the long fuzz run: a 10^8 x 1 PNG of a few bytes was scaled up to
    # gigabytes by the crop rule (MemoryError).
    from PIL import Image

    from dataset import images

    image = Image.new('1', (Image.MAX_IMAGE_PIXELS // 4, 1))
    with pytest.raises(ValueError, match='too elongated'):
        images.fit(image, (8, 8), 'crop')
