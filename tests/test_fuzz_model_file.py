"""Fuzzing model.h5 as evaluate.py, predict.py and export.py read it: damaged bytes, damaged
preprocessing attributes and model configs (unknown layers, a Lambda), first without
TensorFlow (``read_preprocessing``), then through Keras for what that accepts; plus one
damaged file given to each tool."""

import json
import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest
from conftest import ROOT
from fuzzing import (
    STRICT,
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

from dataset import fashion_mnist
from sesemi_base.errors import UsageError
from sesemi_tf import model_io

pytestmark = STRICT

SHAPE = (32, 32, 1)


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    """A small model.h5 as training writes it (a Fashion-MNIST model)."""
    from sesemi_base.compat import K, keras

    K.clear_session()
    inputs = keras.layers.Input(shape=SHAPE)
    x = keras.layers.Conv2D(2, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation='softmax')(x))
    prep = model_io.Preprocessing(
        'fashion_mnist', 10, SHAPE, fashion_mnist.CLASS_NAMES, False, 1, pad=2
    )
    path = str(tmp_path_factory.mktemp('model') / 'model.h5')
    model_io.save_model(path, model, prep)
    with open(path, 'rb') as f:
        return path, f.read()


def valid(prep):
    assert prep.input_shape == SHAPE and prep.n_classes == len(prep.class_names) >= 1
    assert prep.zca is None or prep.zca.matrix.shape == (1024, 1024)


def read(path):
    return check(lambda: model_io.read_preprocessing(path), [path])


@budget(40)
@given(data=st.data())
def test_fuzz_model_file_bytes(model_file, data):
    _, raw = model_file
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.h5')
        write(path, data.draw(damaged_bytes(raw, head=1024)))
        prep = read(path)
        if not isinstance(prep, Refused):
            valid(prep)


ATTRIBUTES = [
    'format_version',
    'data',
    'n_classes',
    'input_shape',
    'class_names',
    'gcn_scale',
    'zca',
    'hflip',
    'seed',
    'pad',
    'resize',
    'alpha',
]


@budget(40)
@given(data=st.data())
def test_fuzz_model_file_attributes(model_file, data):
    """Preprocessing attributes dropped or of another type or shape, huge or negative."""
    source, _ = model_file
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.h5')
        shutil.copy(source, path)
        with h5py.File(path, 'a') as f:
            attrs = f['sesemi'].attrs
            name = data.draw(st.sampled_from(ATTRIBUTES), 'attribute')
            if data.draw(st.booleans(), 'drop'):
                del attrs[name]
            else:
                value = data.draw(
                    st.one_of(
                        st.integers(-(2**63), 2**63 - 1),
                        st.floats(),
                        st.text(max_size=20).map(lambda t: t.replace('\0', '')),
                        st.lists(st.integers(-(2**31), 2**31), max_size=5).map(np.array),
                        st.just(np.zeros((2, 2))),
                        st.booleans(),
                        json_values.map(lambda v: json.dumps(v).replace('\0', '')),
                    ),
                    'value',
                )
                attrs[name] = value
        prep = read(path)
        if not isinstance(prep, Refused):
            valid(prep)


@budget(30)
@given(data=st.data())
def test_fuzz_model_config(model_file, data):
    """The Keras model config damaged: foreign layers (a Lambda), wrong structure."""
    source, _ = model_file
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.h5')
        shutil.copy(source, path)
        with h5py.File(path, 'a') as f:
            config = json.loads(f.attrs['model_config'])
            kind = data.draw(st.sampled_from(['lambda', 'unknown', 'damage']), 'kind')
            if kind == 'damage':
                config = data.draw(damaged_json(config))
            else:
                layer = config['config']['layers'][data.draw(st.integers(1, 3), 'layer')]
                layer['class_name'] = (
                    'Lambda' if kind == 'lambda' else data.draw(st.text(max_size=12), 'class')
                )
            f.attrs['model_config'] = json_text(config)
        prep = read(path)
        if kind == 'lambda':
            assert isinstance(prep, Refused) and 'Lambda' in prep.message
        if not isinstance(prep, Refused):
            valid(prep)


@budget(25)
@given(data=st.data())
def test_fuzz_model_file_through_keras(model_file, data):
    """What read_preprocessing accepts, Keras loads, or the tools refuse in one line."""
    from sesemi_base.compat import K

    _, raw = model_file
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.h5')
        # Damage past the HDF5 superblock: where the weights and attributes are.
        write(path, data.draw(damaged_bytes(raw, head=len(raw))))
        if isinstance(read(path), Refused):
            return
        K.clear_session()
        loaded = check(lambda: model_io.load_model(path), [path])
        if not isinstance(loaded, Refused):
            model, prep = loaded
            valid(prep)
            assert tuple(model.input_shape[1:]) == SHAPE and model.output_shape[-1] == 10


def test_a_folder_in_place_of_the_model_file_is_refused(tmp_path):
    path = str(tmp_path / 'model.h5')
    make_folder(path)
    assert isinstance(read(path), Refused)


def test_an_internal_error_while_loading_keeps_its_traceback(model_file, monkeypatch):
    # Only what a damaged file raises becomes one line: a bug keeps its traceback.
    def broken(*args, **kwargs):
        raise RuntimeError('an internal error')

    monkeypatch.setattr(model_io, '_keras_input_shape', broken)
    with pytest.raises(RuntimeError):
        model_io.read_preprocessing(model_file[0])


def test_model_file_that_crashes_hdf5_1_10_is_one_line(tmp_path):
    # Found by a long fuzz run on TF 1.15: h5py 2.10 (HDF5 1.10.4) reading the attributes of
    # this byte-damaged file (a model as the fixture's) asked for all the memory there is and
    # died (a segmentation fault, or killed by the kernel).
    path = str(tmp_path / 'model.h5')
    shutil.copy(os.path.join(ROOT, 'tests', 'data', 'model_crashing_hdf5_1_10.h5'), path)
    result = read(path)
    assert isinstance(result, Refused) and 'damaged' in result.message
    if h5py.version.version_tuple[0] < 3:  # read by the child, within its memory limit
        assert 'memory allocation failed' in result.message


@pytest.mark.parametrize(
    'program, message',
    [
        (
            'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)',
            'crashed reading it (signal 11)',
        ),
        ('import time; time.sleep(60)', 'did not finish reading it in 1 s'),
        ('import sys; sys.exit(%d)' % model_io.CHILD_OUT_OF_MEMORY, 'more memory than'),
        (
            'import sys; sys.stderr.write("OSError: bad heap"); sys.exit(%d)'
            % model_io.CHILD_READ_ERROR,
            'is damaged (OSError: bad heap)',
        ),
    ],
)
def test_a_child_read_that_fails_is_one_line(model_file, monkeypatch, program, message):
    monkeypatch.setattr(model_io, 'CHILD_READ_SECONDS', 1)
    with pytest.raises(UsageError) as raised:
        model_io._read_in_a_child(model_file[0], program)
    assert message in str(raised.value) and model_file[0] in str(raised.value)
    assert '\n' not in str(raised.value)
    model_io._read_in_a_child(model_file[0])  # the real reading of a valid file passes


def test_a_weight_declaring_more_bytes_than_the_file_is_refused_before_keras(model_file, tmp_path):
    # Found by a long fuzz run on TF 1.15: three bytes overwritten in a weight's dataspace
    # declared a 3x1056964611x1x2 float32 kernel, and Keras' load_model asked numpy for
    # 23.6 GiB (MemoryError). The declared sizes are checked before Keras reads any weight.
    path, raw = model_file
    with h5py.File(str(tmp_path / 'model.h5'), 'w') as out:
        out.create_dataset('big', shape=(3, 1056964611, 1, 2), dtype='f4')  # declared, not written
    with h5py.File(str(tmp_path / 'model.h5'), 'r') as f, pytest.raises(
        ValueError, match='dataset big declares 25367150664 bytes'
    ):
        model_io._check_declared_sizes(f, len(raw))
    with h5py.File(path, 'r') as f:
        model_io._check_declared_sizes(f, len(raw))  # the valid file passes


def test_model_file_with_a_damaged_symbol_table_is_one_line(model_file, tmp_path):
    # Found by fuzzing: h5py raised RuntimeError ('bad symbol table node signature'),
    # which read_preprocessing let through as a traceback.
    _, raw = model_file
    path = str(tmp_path / 'model.h5')
    write(path, raw[:168] + b'\x01' + raw[169:])
    result = read(path)
    assert isinstance(result, Refused) and 'damaged' in result.message


@pytest.mark.parametrize('name', ['Lambda', 'TFOpLambda', 'MyCustomLayer'])
def test_model_file_with_a_foreign_layer_is_refused_before_keras(model_file, tmp_path, name):
    path = str(tmp_path / 'model.h5')
    shutil.copy(model_file[0], path)
    with h5py.File(path, 'a') as f:
        config = json.loads(f.attrs['model_config'])
        config['config']['layers'][2]['class_name'] = name
        f.attrs['model_config'] = json.dumps(config)
    result = read(path)
    assert isinstance(result, Refused) and "a layer of class '%s'" % name in result.message


# ------------------------------------------------------------------------- the tools


def lambda_model(raw, tmp):
    path = os.path.join(tmp, 'lambda.h5')
    write(path, raw)
    with h5py.File(path, 'a') as f:
        config = json.loads(f.attrs['model_config'])
        config['config']['layers'][1]['class_name'] = 'Lambda'
        f.attrs['model_config'] = json.dumps(config)
    with open(path, 'rb') as f:
        return f.read()


TOOL_CASES = [
    ('evaluate.py', lambda raw, tmp: raw[: len(raw) // 2]),
    ('predict.py', lambda raw, tmp: raw[:600] + bytes(b ^ 0x55 for b in raw[600:700]) + raw[700:]),
    ('export.py', lambda_model),
]


@pytest.mark.parametrize('case', range(len(TOOL_CASES)))
def test_tool_refuses_a_damaged_model_file(model_file, tmp_path, case):
    script, damage = TOOL_CASES[case]
    _, raw = model_file
    folder = str(tmp_path / 'run')
    os.makedirs(folder)
    path = os.path.join(folder, 'model.h5')
    write(path, damage(raw, str(tmp_path)))
    with open(os.path.join(folder, 'evaluation.json'), 'w') as f:
        f.write('{}\n')  # an earlier result, which must stay as it was
    before = snapshot(folder)
    extra = {
        'evaluate.py': ['--dataset=' + str(tmp_path / 'fashion')],
        'predict.py': ['--images=' + str(tmp_path), '--output=' + os.path.join(folder, 'p.json')],
        'export.py': ['--output=' + os.path.join(folder, 'export')],
    }[script]
    proc = run_tool([script, '--model=' + path] + extra)
    assert_refused(proc, [path])
    assert snapshot(folder) == before
