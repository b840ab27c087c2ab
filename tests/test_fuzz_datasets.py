"""Fuzzing the benchmark datasets' readers: CIFAR-10 and CIFAR-100 python pickles, SVHN
.mat files and Fashion-MNIST gzip IDX files, each damaged in its bytes and in its
structure (wrong dtype or shape, missing or extra keys, huge declared sizes, pickles
naming other globals), plus a sample of the damaged files given to the training entry."""

import gzip
import os
import pickle
import struct
import tempfile

import fuzzing
import numpy as np
import pytest
import scipy.io
from fuzzing import (
    IS_ROOT,
    ROOT_SKIP_REASON,
    STRICT,
    SUBPROCESS_CASES,
    Refused,
    assert_refused,
    budget,
    check,
    damaged_bytes,
    make_folder,
    run_tool,
    snapshot,
    write,
)
from hypothesis import given, note
from hypothesis import strategies as st

from dataset import cifar10, cifar100, fashion_mnist, svhn

pytestmark = STRICT

N = 10  # images per file: one per class


def valid_split(split, channels, n_classes):
    """Checks one (images, labels) pair a loader returned."""
    x, y = split
    assert isinstance(x, np.ndarray) and x.dtype == np.float32, type(x)
    assert x.ndim == 4 and x.shape[1:] == (32, 32, channels) and len(x) > 0, x.shape
    assert y.dtype == np.int64 and y.shape == (len(x),), (y.dtype, y.shape)
    assert x.min() >= 0 and x.max() <= 1
    assert y.min() >= 0 and y.max() < n_classes


def valid_data(data, channels, n_classes):
    train, test = data
    valid_split(train, channels, n_classes)
    valid_split(test, channels, n_classes)


# ------------------------------------------------------------------ CIFAR pickles


def cifar_rows(seed):
    return np.random.RandomState(seed).randint(0, 256, (N, 3072)).astype(np.uint8)


def cifar_entries(title, seed):
    """The dict of one valid CIFAR-10 or CIFAR-100 file."""
    labels = list(range(N)) if title == 'CIFAR-10' else list(range(90, 90 + N))
    key = 'labels' if title == 'CIFAR-10' else 'fine_labels'
    return {'data': cifar_rows(seed), key: labels, 'batch_label': 'batch %d' % seed}


CIFAR = {
    'CIFAR-10': (cifar10, 10),
    'CIFAR-100': (cifar100, 100),
}


def write_cifar(folder, title, damaged=None, raw=None):
    """Writes a valid CIFAR folder, the file ``damaged`` holding ``raw`` instead."""
    module = CIFAR[title][0]
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(module.FILES):
        path = os.path.join(folder, name)
        if name == damaged:
            if raw is None:
                make_folder(path)
            else:
                write(path, raw)
        else:
            write(path, pickle.dumps(cifar_entries(title, k), protocol=2))
    return os.path.join(folder, damaged) if damaged else folder


def check_cifar(title, name, raw):
    module, n_classes = CIFAR[title]
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, 'data')
        path = write_cifar(folder, title, name, raw)
        result = check(lambda: module.load_data(folder), [path])
        if not isinstance(result, Refused):
            valid_data(result, 3, n_classes)


@pytest.mark.parametrize('title', sorted(CIFAR))
@budget(40)
@given(data=st.data())
def test_fuzz_cifar_bytes(title, data):
    module = CIFAR[title][0]
    name = data.draw(st.sampled_from(module.FILES), 'file')
    k = module.FILES.index(name)
    raw = pickle.dumps(cifar_entries(title, k), protocol=data.draw(st.integers(0, 4)))
    check_cifar(title, name, data.draw(damaged_bytes(raw, head=128), 'damage'))


@st.composite
def cifar_structure(draw, title):
    """A CIFAR dict with drawn structural damage, pickled with a drawn protocol."""
    obj = cifar_entries(title, 0)
    key = 'labels' if title == 'CIFAR-10' else 'fine_labels'
    kind = draw(
        st.sampled_from(
            ['dtype', 'shape', 'data', 'labels', 'drop', 'extra', 'bytes_keys', 'whole']
        )
    )
    note(kind)
    if kind == 'dtype':
        dtype = draw(st.sampled_from(['float32', 'float64', 'int64', 'uint16', 'int8', 'bool']))
        obj['data'] = obj['data'].astype(dtype)
    elif kind == 'shape':
        shape = draw(
            st.sampled_from([(N * 3072,), (N, 3, 1024), (N, 3071), (N, 3073), (0, 3072), (N, 0)])
        )
        obj['data'] = np.resize(obj['data'], shape)
    elif kind == 'data':
        obj['data'] = draw(fuzzing.json_values)
    elif kind == 'labels':
        obj[key] = draw(
            st.one_of(
                st.lists(st.integers(-(2**63), 2**64), max_size=2 * N),
                st.lists(st.floats(), min_size=N, max_size=N),
                st.lists(st.sampled_from([0, 1, 9, 10, 99, 100, -1]), min_size=N, max_size=N),
                fuzzing.json_values,
            )
        )
    elif kind == 'drop':
        del obj[draw(st.sampled_from(sorted(obj)))]
    elif kind == 'extra':
        obj[draw(st.text(max_size=8))] = draw(fuzzing.json_values)
    elif kind == 'bytes_keys':
        obj = {k.encode(): v for k, v in obj.items()}
    else:
        obj = draw(st.sampled_from([[obj], obj['data'], 7, 'data', None, (obj,)]))
    return pickle.dumps(obj, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))


@pytest.mark.parametrize('title', sorted(CIFAR))
@budget(30)
@given(data=st.data())
def test_fuzz_cifar_structure(title, data):
    module = CIFAR[title][0]
    name = data.draw(st.sampled_from(module.FILES), 'file')
    check_cifar(title, name, data.draw(cifar_structure(title)))


# Globals a hostile pickle may name: code execution, file access, allocation.
HOSTILE_GLOBALS = [
    ('os', 'system'),
    ('posix', 'system'),
    ('builtins', 'eval'),
    ('builtins', 'exec'),
    ('builtins', 'getattr'),
    ('builtins', '__import__'),
    ('builtins', 'open'),
    ('subprocess', 'Popen'),
    ('numpy', 'load'),
    ('numpy', 'fromfile'),
    ('numpy.testing._private.utils', 'runstring'),
    ('pickle', 'loads'),
    ('fuzzing', 'tripwire'),
    ('__main__', 'tripwire'),
]
TRIPPED = []


def tripwire(*args):
    """A global that a hostile test pickle names: it must never be called."""
    TRIPPED.append(args)


fuzzing.tripwire = tripwire


def hostile_pickle(module, name, protocol):
    """A pickle that calls ``module.name('x')`` when loaded, with GLOBAL or STACK_GLOBAL."""
    if protocol >= 4:
        parts = [b'\x80\x04', b'\x8c', bytes([len(module)]), module, b'\x8c', bytes([len(name)])]
        return b''.join(parts + [name, b'\x93\x8c\x01x\x85R.'])
    return b'\x80\x02c' + module + b'\n' + name + b'\n' + b'X\x01\x00\x00\x00x\x85R.'


@pytest.mark.parametrize('title', sorted(CIFAR))
@budget(30)
@given(data=st.data())
def test_fuzz_cifar_pickle_naming_another_global_is_refused(title, data):
    module, name = data.draw(
        st.one_of(
            st.sampled_from(HOSTILE_GLOBALS),
            st.tuples(
                st.from_regex(r'[a-z_][a-z0-9_.]{0,20}', fullmatch=True),
                st.from_regex(r'[A-Za-z_][A-Za-z0-9_]{0,20}', fullmatch=True),
            ),
        )
    )
    raw = hostile_pickle(module.encode(), name.encode(), data.draw(st.sampled_from([2, 4])))
    loader = CIFAR[title][0]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_cifar(os.path.join(tmp, 'data'), title, loader.FILES[-1], raw)
        result = check(lambda: loader.load_data(os.path.dirname(path)), [path])
    assert isinstance(result, Refused)
    assert not TRIPPED


# ------------------------------------------------------------------------- SVHN


def svhn_variables(seed):
    x = np.random.RandomState(seed).randint(0, 256, (32, 32, 3, N)).astype(np.uint8)
    y = (np.arange(N) % 10 + 1).astype(np.uint8).reshape(N, 1)  # 10 stands for 0
    return {'X': x, 'y': y}


def mat_bytes(variables, **options):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'x.mat')
        scipy.io.savemat(path, variables, **options)
        with open(path, 'rb') as f:
            return f.read()


def check_svhn(name, raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, 'svhn')
        os.makedirs(folder)
        for k, other in enumerate(svhn.FILES):
            write(os.path.join(folder, other), mat_bytes(svhn_variables(k)))
        path = os.path.join(folder, name)
        if raw is None:
            make_folder(path)
        else:
            write(path, raw)
        result = check(lambda: svhn.load_data(folder), [path])
        if not isinstance(result, Refused):
            valid_data(result, 3, 10)


@budget(40)
@given(data=st.data())
def test_fuzz_svhn_bytes(data):
    name = data.draw(st.sampled_from(svhn.FILES), 'file')
    compress = data.draw(st.booleans(), 'compressed')
    raw = mat_bytes(svhn_variables(svhn.FILES.index(name)), do_compression=compress)
    check_svhn(name, data.draw(damaged_bytes(raw, head=256), 'damage'))


@budget(30)
@given(data=st.data())
def test_fuzz_svhn_structure(data):
    variables = svhn_variables(0)
    kind = data.draw(st.sampled_from(['dtype', 'shape', 'labels', 'drop', 'extra', 'format4']))
    if kind == 'dtype':
        dtype = data.draw(st.sampled_from(['float32', 'float64', 'int16', 'uint16', 'int8']))
        variables['X'] = variables['X'].astype(dtype)
    elif kind == 'shape':
        shape = data.draw(
            st.sampled_from(
                [(32, 32, 3), (32, 32, 1, N), (N, 32, 32, 3), (3072, N), (32, 32, 3, 0)]
            )
        )
        variables['X'] = np.resize(variables['X'], shape)
    elif kind == 'labels':
        y = data.draw(
            st.one_of(
                st.lists(st.integers(-1000, 1000), min_size=1, max_size=2 * N),
                st.lists(st.floats(width=32), min_size=N, max_size=N),
            )
        )
        variables['y'] = np.asarray(y).reshape(-1, 1) if data.draw(st.booleans()) else np.asarray(y)
    elif kind == 'drop':
        del variables[data.draw(st.sampled_from(['X', 'y']))]
    elif kind == 'extra':
        variables['extra'] = np.zeros(3)
    elif kind == 'format4':  # MATLAB 4 holds 2-D matrices only
        variables['X'] = variables['X'].reshape(3072, N)
    options = {'format': '4'} if kind == 'format4' else {}
    check_svhn(svhn.FILES[0], mat_bytes(variables, **options))


# ---------------------------------------------------------------- Fashion-MNIST


def idx(array, magic=None, dims=None):
    magic = (0x800 | array.ndim) if magic is None else magic
    dims = array.shape if dims is None else dims
    return (
        struct.pack('>I', magic)
        + struct.pack('>%dI' % len(dims), *dims)
        + array.astype(np.uint8).tobytes()
    )


def fashion_arrays(prefix):
    rng = np.random.RandomState(len(prefix))
    return rng.randint(0, 256, (N, 28, 28)), np.arange(N)


def fashion_raw(name):
    images, labels = fashion_arrays(name.split('-')[0])
    return idx(images if '-images-' in name else labels)


def check_fashion(name, raw, gz=True):
    """Loads a Fashion-MNIST folder whose file ``name`` holds ``raw`` (IDX bytes, gzipped
    here when ``gz``; None: a folder in its place)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, 'fashion')
        os.makedirs(folder)
        for other in fashion_mnist.FILES:
            if other != name:
                write(os.path.join(folder, other), gzip.compress(fashion_raw(other)))
        path = os.path.join(folder, name)
        if raw is None:
            make_folder(path)
        else:
            write(path, gzip.compress(raw) if gz else raw)
        result = check(lambda: fashion_mnist.load_data(folder), [path])
        if not isinstance(result, Refused):
            valid_data(result, 1, 10)


@budget(40)
@given(data=st.data())
def test_fuzz_fashion_mnist_bytes(data):
    name = data.draw(st.sampled_from(fashion_mnist.FILES), 'file')
    raw = fashion_raw(name)
    if data.draw(st.booleans(), 'damage the gzip stream'):
        check_fashion(name, data.draw(damaged_bytes(gzip.compress(raw))), gz=False)
    else:
        check_fashion(name, data.draw(damaged_bytes(raw, head=16)))


@budget(40)
@given(data=st.data())
def test_fuzz_fashion_mnist_header(data):
    """Wrong magic numbers and declared sizes, huge ones included."""
    name = data.draw(st.sampled_from(fashion_mnist.FILES), 'file')
    images, labels = fashion_arrays(name.split('-')[0])
    array = images if '-images-' in name else labels
    size = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, N - 1, N, N + 1, 28]))
    dims = data.draw(st.lists(size, min_size=array.ndim, max_size=array.ndim), 'dims')
    magic = data.draw(st.one_of(st.just(0x800 | array.ndim), st.integers(0, 2**32 - 1)), 'magic')
    check_fashion(name, idx(array, magic, dims), gz=data.draw(st.booleans(), 'gz'))


# ----------------------------------------------- a file where a folder or no access


@pytest.mark.parametrize(
    'title, name',
    [
        ('cifar10', 'test_batch'),
        ('cifar100', 'train'),
        ('svhn', 'test_32x32.mat'),
        ('fashion_mnist', 't10k-labels-idx1-ubyte.gz'),
    ],
)
def test_a_folder_in_place_of_a_dataset_file_is_refused(title, name):
    if title.startswith('cifar'):
        check_cifar('CIFAR-10' if title == 'cifar10' else 'CIFAR-100', name, None)
    elif title == 'svhn':
        check_svhn(name, None)
    else:
        check_fashion(name, None)


@pytest.mark.skipif(IS_ROOT, reason=ROOT_SKIP_REASON)
def test_an_unreadable_dataset_file_is_refused(tmp_path):
    folder = str(tmp_path / 'data')
    path = write_cifar(folder, 'CIFAR-10', 'test_batch', pickle.dumps(cifar_entries('x', 0)))
    os.chmod(path, 0)
    result = check(lambda: cifar10.load_data(folder), [path])
    assert isinstance(result, Refused) and 'cannot be read' in result.message


# --------------------------------------------------------------- the training entry


def gz_idx(name, **kwargs):
    images, labels = fashion_arrays(name.split('-')[0])
    return gzip.compress(idx(images if '-images-' in name else labels, **kwargs))


# (data, file, damaged content) for the subprocess sample: a cut, flipped header bytes
# and the format's hostile case.
ENTRY_CASES = {
    'cifar10': [
        ('test_batch', lambda raw: raw[: len(raw) // 2]),
        ('data_batch_1', lambda raw: raw[:2] + bytes(b ^ 0x5A for b in raw[2:12]) + raw[12:]),
        ('data_batch_3', lambda raw: hostile_pickle(b'os', b'system', 2)),
    ],
    'svhn': [
        ('train_32x32.mat', lambda raw: raw[: len(raw) // 2]),
        (
            'test_32x32.mat',
            lambda raw: raw[:128] + bytes(b ^ 0xFF for b in raw[128:160]) + raw[160:],
        ),
        ('test_32x32.mat', lambda raw: mat_bytes({'X': np.zeros((32, 32, 3, 2)), 'y': np.ones(2)})),
    ],
    'fashion_mnist': [
        ('train-images-idx3-ubyte.gz', lambda raw: raw[: len(raw) // 2]),
        ('t10k-labels-idx1-ubyte.gz', lambda raw: raw[:3] + b'\xff' + raw[4:]),
        (
            't10k-images-idx3-ubyte.gz',
            lambda raw: gz_idx('t10k-images-idx3-ubyte.gz', dims=(2**32 - 1, 28, 28)),
        ),
    ],
}


def write_dataset(folder, data):
    os.makedirs(folder)
    if data == 'cifar10':
        write_cifar(folder, 'CIFAR-10')
    elif data == 'svhn':
        for k, name in enumerate(svhn.FILES):
            write(os.path.join(folder, name), mat_bytes(svhn_variables(k)))
    else:
        for name in fashion_mnist.FILES:
            write(os.path.join(folder, name), gzip.compress(fashion_raw(name)))


@pytest.mark.parametrize('data', sorted(ENTRY_CASES))
@pytest.mark.parametrize('case', range(SUBPROCESS_CASES))
def test_training_entry_refuses_a_damaged_dataset_file(tmp_path, data, case):
    name, damage = ENTRY_CASES[data][case]
    folder, result = str(tmp_path / 'data'), str(tmp_path / 'result')
    write_dataset(folder, data)
    path = os.path.join(folder, name)
    with open(path, 'rb') as f:
        write(path, damage(f.read()))
    os.makedirs(result)
    with open(os.path.join(result, 'metrics.jsonl'), 'w') as f:
        f.write('{"step": 5}\n')  # an earlier run's, which must stay as it was
    before = snapshot(folder, result)
    proc = run_tool(
        [
            'train_evaluate_asl2.py',
            '--data=' + data,
            '--dataset=' + folder,
            '--result=' + result,
            '--resume',
            '--labels=10',
        ]
    )
    assert_refused(proc, [path])
    assert snapshot(folder, result) == before
