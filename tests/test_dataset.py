"""The dataset loaders and registry, on tiny files written here in each official
format (CIFAR python pickles, SVHN .mat, Fashion-MNIST gzip IDX), and every kind
of bad input they must turn into a one-line UsageError."""

import os
import pickle
import re
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io
from conftest import idx_bytes, write_bytes

import dataset
from dataset import cifar10, cifar100, fashion_mnist, svhn
from dataset.common import as_labels, read_file
from sesemi_base.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_FASHION = '/usr/share/datasets/fashion-mnist'


# -------------------------------------------------------------- file writers


def cifar_rows(n, seed):
    """Random uint8 CIFAR rows, N×3072 channel-major."""
    return np.random.RandomState(seed).randint(0, 256, (n, 3072)).astype(np.uint8)


def rows_to_nhwc(rows):
    """What a loader should make of CIFAR rows, before scaling."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write_pickle(path, obj, protocol=2):
    with open(str(path), 'wb') as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(folder, n=3, bytes_keys=False, protocol=2):
    """The six CIFAR-10 batches with ``n`` images each; returns name → (rows, labels)."""
    os.makedirs(str(folder), exist_ok=True)
    written = {}
    for k, name in enumerate(cifar10.FILES):
        rows = cifar_rows(n, seed=k)
        labels = [(k + i) % 10 for i in range(n)]
        keys = (
            (b'data', b'labels', b'batch_label')
            if bytes_keys
            else ('data', 'labels', 'batch_label')
        )
        write_pickle(
            os.path.join(str(folder), name),
            dict(zip(keys, (rows, labels, 'batch %d' % k))),
            protocol,
        )
        written[name] = (rows, labels)
    return written


def write_cifar100(folder, n=4):
    """CIFAR-100 train and test; returns name → (rows, fine labels)."""
    os.makedirs(str(folder), exist_ok=True)
    written = {}
    for k, name in enumerate(cifar100.FILES):
        rows = cifar_rows(n, seed=10 + k)
        fine = [99 - k - i for i in range(n)]
        write_pickle(
            os.path.join(str(folder), name),
            {
                'data': rows,
                'fine_labels': fine,
                'coarse_labels': [i % 20 for i in fine],
                'filenames': ['f%d.png' % i for i in range(n)],
            },
        )
        written[name] = (rows, fine)
    return written


def write_svhn(folder, n=5):
    """SVHN train and test .mat files; returns name → (X 32×32×3×N, y N×1 with 10 for 0)."""
    os.makedirs(str(folder), exist_ok=True)
    written = {}
    for k, name in enumerate(svhn.FILES):
        x = np.random.RandomState(20 + k).randint(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 meaning 0
        scipy.io.savemat(os.path.join(str(folder), name), {'X': x, 'y': y})
        written[name] = (x, y)
    return written


def write_fashion(folder, n_train=6, n_test=4, gz=True):
    """The four Fashion-MNIST IDX files; returns name → array (28×28 images or labels)."""
    os.makedirs(str(folder), exist_ok=True)
    rng = np.random.RandomState(30)
    arrays = {}
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        arrays[prefix + '-images-idx3-ubyte.gz'] = rng.randint(1, 256, (n, 28, 28)).astype(np.uint8)
        arrays[prefix + '-labels-idx1-ubyte.gz'] = (np.arange(n) % 10).astype(np.uint8)
    for name, array in arrays.items():
        write_bytes(os.path.join(str(folder), name if gz else name[:-3]), idx_bytes(array))
    return arrays


WRITERS = {
    'cifar10': write_cifar10,
    'cifar100': write_cifar100,
    'svhn': write_svhn,
    'fashion_mnist': write_fashion,
}
NAMES = sorted(WRITERS)


def usage_error(fn, *fragments):
    """Calls ``fn``, expects a one-line UsageError that names ``fragments`` and the doc."""
    with pytest.raises(UsageError) as info:
        fn()
    message = str(info.value)
    assert '\n' not in message
    assert 'see dataset/dataset.txt' in message
    for fragment in fragments:
        assert fragment in message
    return message


def scaled(uint8_images):
    return uint8_images.astype(np.float32) / np.float32(255)


# ----------------------------------------------------------- good files load


def test_cifar10_round_trip(tmp_path):
    written = write_cifar10(tmp_path)
    (x, y), (xt, yt) = cifar10.load_data(str(tmp_path))
    assert x.shape == (15, 32, 32, 3) and xt.shape == (3, 32, 32, 3)
    assert x.dtype == np.float32 and y.dtype == np.int64 and yt.dtype == np.int64
    train_rows = np.concatenate([written['data_batch_%d' % i][0] for i in range(1, 6)])
    np.testing.assert_array_equal(x, scaled(rows_to_nhwc(train_rows)))
    np.testing.assert_array_equal(xt, scaled(rows_to_nhwc(written['test_batch'][0])))
    assert y.tolist() == sum((written['data_batch_%d' % i][1] for i in range(1, 6)), [])
    assert yt.tolist() == written['test_batch'][1]
    assert x.min() >= 0 and x.max() <= 1


def test_cifar10_pixel_lands_at_row_col_channel(tmp_path):
    write_cifar10(tmp_path)
    rows = np.zeros((2, 3072), np.uint8)
    rows[1, 2 * 1024 + 5 * 32 + 7] = 200  # blue plane, row 5, column 7 of image 1
    rows[0, 0 * 1024 + 31 * 32 + 0] = 17  # red plane, row 31, column 0 of image 0
    write_pickle(tmp_path / 'test_batch', {'data': rows, 'labels': [0, 1]})
    _, (xt, _) = cifar10.load_data(str(tmp_path))
    assert xt[1, 5, 7, 2] == np.float32(200) / np.float32(255)
    assert xt[0, 31, 0, 0] == np.float32(17) / np.float32(255)
    assert np.count_nonzero(xt) == 2


def test_cifar10_bytes_keys(tmp_path):
    written = write_cifar10(tmp_path, bytes_keys=True)
    _, (xt, yt) = cifar10.load_data(str(tmp_path))
    np.testing.assert_array_equal(xt, scaled(rows_to_nhwc(written['test_batch'][0])))
    assert yt.tolist() == written['test_batch'][1]


@pytest.mark.parametrize('protocol', range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_cifar10_any_pickle_protocol(tmp_path, protocol):
    written = write_cifar10(tmp_path, protocol=protocol)
    labels = np.array(written['test_batch'][1], np.int64)  # numpy scalars in the list too
    write_pickle(
        tmp_path / 'test_batch',
        {'data': written['test_batch'][0], 'labels': list(labels)},
        protocol,
    )
    _, (xt, yt) = cifar10.load_data(str(tmp_path))
    assert yt.tolist() == labels.tolist() and xt.shape == (3, 32, 32, 3)


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    (x, y), (xt, yt) = cifar100.load_data(str(tmp_path))
    assert x.shape == (4, 32, 32, 3) and xt.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(x, scaled(rows_to_nhwc(written['train'][0])))
    np.testing.assert_array_equal(xt, scaled(rows_to_nhwc(written['test'][0])))
    assert y.tolist() == written['train'][1] and yt.tolist() == written['test'][1]
    assert y.max() == 99 and y.dtype == np.int64


def test_svhn_round_trip_and_ten_means_zero(tmp_path):
    written = write_svhn(tmp_path, n=12)
    (x, y), (xt, yt) = svhn.load_data(str(tmp_path))
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int64
    raw_x, raw_y = written['train_32x32.mat']
    assert x[3, 4, 5, 2] == np.float32(raw_x[4, 5, 2, 3]) / np.float32(255)
    np.testing.assert_array_equal(x, scaled(raw_x.transpose(3, 0, 1, 2)))
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert raw_y[9, 0] == 10 and y[9] == 0
    np.testing.assert_array_equal(xt, scaled(written['test_32x32.mat'][0].transpose(3, 0, 1, 2)))


def test_svhn_double_labels_and_compressed_mat(tmp_path):
    x = np.full((32, 32, 3, 2), 255, np.uint8)
    for name in svhn.FILES:
        scipy.io.savemat(
            str(tmp_path / name), {'X': x, 'y': np.array([[10.0], [3.0]])}, do_compression=True
        )
    (xs, ys), _ = svhn.load_data(str(tmp_path))
    assert ys.tolist() == [0, 3] and np.all(xs == 1)


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_padding_and_centre(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    (x, y), (xt, yt) = fashion_mnist.load_data(str(tmp_path))
    assert x.shape == (6, 32, 32, 1) and xt.shape == (4, 32, 32, 1)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 2:30, 2:30, 0], scaled(arrays['train-images-idx3-ubyte.gz']))
    np.testing.assert_array_equal(xt[:, 2:30, 2:30, 0], scaled(arrays['t10k-images-idx3-ubyte.gz']))
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(x[:, border] == 0) and np.all(xt[:, border] == 0)
    assert np.all(x[:, 2:30, 2:30] > 0)  # the writer uses values 1..255
    assert y.tolist() == [0, 1, 2, 3, 4, 5] and yt.tolist() == [0, 1, 2, 3]


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION), reason='dataset-fashion-mnist not installed')
def test_real_debian_fashion_mnist():
    (x, y), (xt, yt) = dataset.load('fashion_mnist')
    assert x.shape == (60000, 32, 32, 1) and xt.shape == (10000, 32, 32, 1)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    assert x[:, :2].max() == 0 and x[:, :, 30:].max() == 0 and x.max() == 1


# ------------------------------------------------------------------ registry


def test_registry_entries():
    assert sorted(dataset.DATASETS) == ['cifar10', 'cifar100', 'fashion_mnist', 'folder', 'svhn']
    for name, info in dataset.DATASETS.items():
        assert info.name == name and dataset.get(name) is info
        if name == 'folder':  # described per run from its folder (tests/test_folder.py)
            assert info.loader is None and not info.zca and info.hflip and info.resize == 'crop'
            continue
        assert info.n_classes == len(info.class_names) == len(set(info.class_names))
        assert info.shape[:2] == (32, 32) and info.files and info.resize == 'stretch'
        assert info.default_labels == 1000
    assert dataset.get('cifar10').class_names[:3] == ('airplane', 'automobile', 'bird')
    assert dataset.get('cifar100').n_classes == 100
    assert dataset.get('cifar100').class_names[0] == 'apple'
    assert dataset.get('cifar100').class_names[-1] == 'worm'
    assert dataset.get('svhn').class_names == tuple('0123456789')
    assert dataset.get('fashion_mnist').class_names == (
        'T-shirt/top',
        'Trouser',
        'Pullover',
        'Dress',
        'Coat',
        'Sandal',
        'Shirt',
        'Sneaker',
        'Bag',
        'Ankle boot',
    )
    flags = {
        n: (i.zca, i.hflip, i.sesemi_epochs, i.shape[2])
        for n, i in dataset.DATASETS.items()
        if n != 'folder'
    }
    assert flags == {
        'cifar10': (True, True, 50, 3),
        'cifar100': (True, True, 50, 3),
        'svhn': (False, False, 30, 3),
        'fashion_mnist': (False, True, 30, 1),
    }
    assert dataset.get('fashion_mnist').default_dir == DEBIAN_FASHION
    assert dataset.ASL_EPOCHS == 300


def test_unknown_dataset_lists_known_names():
    message = usage_error(
        lambda: dataset.get('mnist'), "'mnist'", 'cifar10', 'cifar100', 'svhn', 'fashion_mnist'
    )
    assert message == usage_error(lambda: dataset.load('mnist'))


@pytest.mark.parametrize('name', NAMES)
def test_load_by_name_with_folder_and_default(tmp_path, monkeypatch, name):
    WRITERS[name](tmp_path)
    info = dataset.get(name)
    (x, y), (xt, yt) = dataset.load(name, str(tmp_path))
    assert x.shape[1:] == xt.shape[1:] == info.shape
    assert y.max() < info.n_classes
    monkeypatch.setitem(dataset.DATASETS, name, info._replace(default_dir=str(tmp_path)))
    (x2, _), _ = dataset.load(name)
    np.testing.assert_array_equal(x, x2)


def test_doc_names_every_file_and_flag():
    with open(os.path.join(ROOT, 'dataset', 'dataset.txt')) as f:
        doc = f.read()
    for name, info in dataset.DATASETS.items():
        assert '--data=%s' % name in doc
        for file_name in info.files:
            assert file_name in doc


def test_no_tensorflow_import():
    code = (
        "import sys, utils; before = 'tensorflow' in sys.modules; import dataset; "
        "sys.exit(('tensorflow' in sys.modules) != before)"
    )
    assert subprocess.call([sys.executable, '-c', code], cwd=ROOT) == 0


# ---------------------------------------------------- bad input, every loader


@pytest.mark.parametrize('name', NAMES)
def test_missing_folder(tmp_path, name):
    folder = str(tmp_path / 'nowhere')
    usage_error(
        lambda: dataset.load(name, folder),
        folder,
        'does not exist',
        "'%s'" % dataset.get(name).files[0],
    )


@pytest.mark.parametrize('name,file_name', [(n, f) for n in NAMES for f in dataset.get(n).files])
def test_missing_file(tmp_path, name, file_name):
    WRITERS[name](tmp_path)
    os.remove(str(tmp_path / file_name))
    usage_error(lambda: dataset.load(name, str(tmp_path)), "no file '%s'" % file_name)


@pytest.mark.parametrize('name', NAMES)
def test_directory_instead_of_file(tmp_path, name):
    WRITERS[name](tmp_path)
    file_name = dataset.get(name).files[-1]
    os.remove(str(tmp_path / file_name))
    os.mkdir(str(tmp_path / file_name))
    # Named as a folder (fuzzing found the message saying the folder had no such file).
    usage_error(lambda: dataset.load(name, str(tmp_path)), str(tmp_path / file_name), 'is a folder')


def _truncate(path):
    with open(path, 'rb') as f:
        raw = f.read()
    with open(path, 'wb') as f:
        f.write(raw[: len(raw) // 2])


def _garbage(path):
    with open(path, 'wb') as f:
        f.write(b'this is not a dataset file\x00\xff' * 50)


def _empty(path):
    open(path, 'wb').close()


@pytest.mark.parametrize('damage', [_truncate, _garbage, _empty])
@pytest.mark.parametrize('name,file_name', [(n, f) for n in NAMES for f in dataset.get(n).files])
def test_damaged_file(tmp_path, name, file_name, damage):
    WRITERS[name](tmp_path)
    path = str(tmp_path / file_name)
    damage(path)
    usage_error(
        lambda: dataset.load(name, str(tmp_path)),
        "file '%s'" % path,
        'truncated or not in the expected format',
    )


def test_unreadable_file_is_not_called_corrupt(tmp_path):
    def reader(path):
        raise PermissionError(13, 'Permission denied', path)

    path = str(tmp_path / 'test_batch')
    message = usage_error(
        lambda: read_file(path, reader, 'CIFAR-10'),
        path,
        'cannot be read (Permission denied)',
    )
    assert 'truncated' not in message


# ------------------------------------------------------------ CIFAR contents

CIFAR_BAD = [
    ({'data': np.zeros((2, 3000), np.uint8), 'labels': [0, 1]}, "'data' is uint8 2x3000"),
    ({'data': np.zeros((2, 3072)), 'labels': [0, 1]}, "'data' is float64 2x3072"),
    ({'data': [[0] * 3072] * 2, 'labels': [0, 1]}, "'data' is a list"),
    ({'data': np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
    ({'labels': [0, 1]}, "no 'data' entry"),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': ['cat', 'dog']}, 'not integers'),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': [[0, 1], [1, 0]]}, 'labels have shape'),
    ([np.zeros((2, 3072), np.uint8), [0, 1]], 'holds a list, expected a dict'),
]


@pytest.mark.parametrize('content,reason', CIFAR_BAD)
def test_cifar_wrong_content(tmp_path, content, reason):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / 'data_batch_4', content)
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'data_batch_4', reason)


@pytest.mark.parametrize(
    'labels,fragment',
    [
        ([0, 10], 'label 10 outside [0, 10)'),
        ([-1, 3], 'label -1 outside [0, 10)'),
        ([0, 1, 2], '2 images but 3 labels'),
        ([0], '2 images but 1 labels'),
    ],
)
def test_cifar10_bad_labels(tmp_path, labels, fragment):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / 'test_batch', {'data': cifar_rows(2, 0), 'labels': labels})
    usage_error(
        lambda: cifar10.load_data(str(tmp_path)), "file '%s'" % (tmp_path / 'test_batch'), fragment
    )


def test_cifar_no_images(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / 'test_batch', {'data': np.zeros((0, 3072), np.uint8), 'labels': []})
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'test_batch', 'holds no images')


def test_cifar100_label_range_and_key(tmp_path):
    write_cifar100(tmp_path)
    write_pickle(tmp_path / 'test', {'data': cifar_rows(2, 0), 'fine_labels': [5, 100]})
    usage_error(lambda: cifar100.load_data(str(tmp_path)), 'test', 'label 100 outside [0, 100)')
    write_pickle(tmp_path / 'train', {'data': cifar_rows(2, 0), 'labels': [5, 10]})
    usage_error(lambda: cifar100.load_data(str(tmp_path)), 'train', "no 'fine_labels' entry")


class _Exploit:
    def __reduce__(self):
        return (os.mkdir, (os.path.join(os.environ['EXPLOIT_DIR'], 'pwned'),))


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.setenv('EXPLOIT_DIR', str(tmp_path))
    write_cifar10(tmp_path)
    write_pickle(tmp_path / 'data_batch_1', {'data': _Exploit(), 'labels': [0]})
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'data_batch_1', 'mkdir')
    assert not os.path.exists(str(tmp_path / 'pwned'))


def write_raw(path, raw):
    with open(str(path), 'wb') as f:
        f.write(raw)


def test_cifar_pickle_declaring_a_terabyte_bytes_object_is_refused_without_allocating(tmp_path):
    # Found by fuzzing: the C unpickler allocated the size a BINBYTES8 or a protocol-4
    # frame declares before reading it, so a few bytes raised MemoryError (a traceback).
    write_cifar10(tmp_path)
    write_raw(tmp_path / 'test_batch', b'\x80\x04\x8e' + struct.pack('<Q', 2**40) + b'abc.')
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'test_batch', 'truncated')
    write_raw(tmp_path / 'test_batch', b'\x80\x04\x95' + struct.pack('<Q', 6 * 2**30) + b'N.')
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'test_batch', 'truncated')


def reduce_pickle(module, name, args):
    """A protocol-2 pickle calling ``module.name(*args)``, args a pickled tuple."""
    return b'\x80\x02c%s\n%s\n%sR.' % (module, name, args[2:-1])


@pytest.mark.parametrize(
    'module, name, args, reason',
    [
        # numpy.ndarray((2**20, 2**20)): an uninitialised terabyte that passes as N x 3072 rows
        (b'numpy', b'ndarray', ((2**28, 3072), 'u1'), 'calls numpy.ndarray'),
        (b'builtins', b'bytes', (2**40,), 'builds bytes of a int'),
        (b'__builtin__', b'bytearray', (2**40,), 'builds bytearray of a int'),
        (b'_codecs', b'encode', ('x' * 100, 'punycode'), "encodes with 'punycode'"),
        # Found by the long fuzz run: a flipped byte of 'latin1' raised LookupError.
        (b'_codecs', b'encode', ('x', 'matin1'), "encodes with 'matin1'"),
    ],
)
def test_cifar_pickle_calling_an_allowed_global_to_allocate_is_refused(
    tmp_path, module, name, args, reason
):
    # Found by fuzzing: the allowed globals were returned as they are, so a pickle could
    # call numpy.ndarray, bytes or bytearray with a size (terabytes), or encode with a
    # slow codec.
    write_cifar10(tmp_path)
    write_raw(tmp_path / 'test_batch', reduce_pickle(module, name, pickle.dumps(args, 2)))
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'test_batch', reason)


def test_cifar_pickle_reconstructing_a_huge_array_is_refused(tmp_path):
    # numpy's _reconstruct makes an empty array, which the pickle's state then fills.
    write_cifar10(tmp_path)
    args = pickle.dumps((np.ndarray, (2**28, 3072), b'b'), 2)[2:-1]
    raw = b'\x80\x02cnumpy.core.multiarray\n_reconstruct\n' + args + b'R.'
    write_raw(tmp_path / 'test_batch', raw)
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'test_batch', 'reconstructs')


@pytest.mark.parametrize('copy', [True, False])
@pytest.mark.parametrize('flags', [1, 0x3F])
def test_cifar_pickle_giving_a_dtype_other_flags_is_refused(tmp_path, copy, flags):
    # Found by the long fuzz run: a flipped byte in the uint8 dtype's pickled state set its
    # flags to "holds object references", and numpy raised an internal error (or, numpy
    # 1.x, would read the pixels as pointers); with copy=False the state would change
    # numpy's own uint8 type for the whole process.
    write_cifar10(tmp_path)
    raw = pickle.dumps({'data': cifar_rows(2, 0), 'labels': [0, 1]}, 2)
    plain = b'J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t'  # elsize, alignment, flags 0
    assert raw.count(plain) == 1
    raw = raw.replace(plain, plain[:-3] + b'K' + bytes([flags]) + b't')
    if not copy:  # dtype('u1', False, True) → dtype('u1', False, False), numpy's own
        raw, n = re.subn(
            rb'(X\x02\x00\x00\x00u1q.)\x89\x88', lambda m: m.group(1) + b'\x89\x89', raw, flags=re.S
        )
        assert n == 1
    write_raw(tmp_path / 'test_batch', raw)
    usage_error(lambda: cifar10.load_data(str(tmp_path)), 'test_batch', 'state numpy does not')
    assert not np.dtype(np.uint8).hasobject and np.dtype(np.uint8).flags == 0


def test_cifar_pickle_of_a_big_endian_machine_is_read(tmp_path):
    write_cifar10(tmp_path)
    labels = np.array([3, 1], '>i8')
    write_pickle(tmp_path / 'test_batch', {'data': cifar_rows(2, 0), 'labels': labels})
    assert list(cifar10.load_data(str(tmp_path))[1][1][-2:]) == [3, 1]


@pytest.mark.parametrize('value', [1e300, -1e20, np.nan, np.inf])
def test_float_labels_out_of_integer_range_are_refused_without_a_warning(value):
    # Found by the long fuzz run: 1e300 passed as a whole number and its cast to int64
    # printed numpy's RuntimeWarning on stderr before the range check.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(ValueError, match='not integers'):
            as_labels(np.array([1.0, value]))


# ------------------------------------------------------------- SVHN contents


@pytest.mark.parametrize(
    'variables,reason',
    [
        (
            {'X': np.zeros((28, 28, 3, 2), np.uint8), 'y': np.ones((2, 1), np.uint8)},
            'uint8 28x28x3x2',
        ),
        (
            {'X': np.zeros((2, 32, 32, 3), np.uint8), 'y': np.ones((2, 1), np.uint8)},
            'expected uint8 32x32x3xN',
        ),
        ({'X': np.zeros((32, 32, 3, 2)), 'y': np.ones((2, 1), np.uint8)}, "'X' is float64"),
        ({'X': np.zeros((32, 32, 3, 2), np.uint8)}, "no variable 'y'"),
        ({'y': np.ones((2, 1), np.uint8)}, "no variable 'X'"),
        ({'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.array([[1.5], [2.0]])}, 'not integers'),
        (
            {'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.ones((2, 1), np.uint8)[:1]},
            '2 images but 1 labels',
        ),
        (
            {'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.array([[3], [11]], np.uint8)},
            'label 11 outside [0, 10)',
        ),
    ],
)
def test_svhn_wrong_content(tmp_path, variables, reason):
    write_svhn(tmp_path)
    scipy.io.savemat(str(tmp_path / 'test_32x32.mat'), variables)
    usage_error(lambda: svhn.load_data(str(tmp_path)), 'test_32x32.mat', reason)


def test_svhn_truncated_compressed_mat(tmp_path):
    write_svhn(tmp_path)
    x = np.random.RandomState(0).randint(0, 256, (32, 32, 3, 4)).astype(np.uint8)
    path = str(tmp_path / 'train_32x32.mat')
    scipy.io.savemat(path, {'X': x, 'y': np.ones((4, 1), np.uint8)}, do_compression=True)
    _truncate(path)
    usage_error(lambda: svhn.load_data(str(tmp_path)), 'train_32x32.mat', 'truncated')


# ---------------------------------------------------- Fashion-MNIST contents


def _images(n=6, size=(28, 28)):
    return np.ones((n,) + size, np.uint8)


@pytest.mark.parametrize(
    'file_name,raw,reason',
    [
        (
            'train-images-idx3-ubyte.gz',
            idx_bytes(_images(), magic=0x801),
            'magic number 0x00000801',
        ),
        (
            'train-labels-idx1-ubyte.gz',
            idx_bytes(np.zeros(6, np.uint8), magic=0x803),
            'magic number 0x00000803',
        ),
        ('train-images-idx3-ubyte.gz', idx_bytes(_images()) + b'\x00', '4705 bytes of data'),
        ('train-images-idx3-ubyte.gz', idx_bytes(_images())[:-1], '4703 bytes of data'),
        (
            't10k-labels-idx1-ubyte.gz',
            idx_bytes(np.zeros(4, np.uint8))[:6],
            'shorter than the IDX header',
        ),
        ('train-images-idx3-ubyte.gz', idx_bytes(_images(size=(27, 28))), '27x28, expected 28x28'),
        (
            'train-images-idx3-ubyte.gz',
            struct.pack('>IIII', 0x803, 2**31, 2**31, 28),
            'the header (2147483648x2147483648x28)',
        ),
    ],
)
def test_fashion_bad_idx(tmp_path, file_name, raw, reason):
    write_fashion(tmp_path)
    write_bytes(tmp_path / file_name, raw)
    usage_error(lambda: fashion_mnist.load_data(str(tmp_path)), file_name, reason)


def test_fashion_gzip_inflating_past_its_header_is_refused_without_holding_it(tmp_path):
    # The reader decompressed the whole file before comparing it with its header, so a
    # small gzip file (here 100 MB of zeros in 100 kB) was held in memory whole.
    import gzip
    import tracemalloc

    write_fashion(tmp_path)
    header = struct.pack('>II', 0x801, 4)
    with gzip.open(str(tmp_path / 't10k-labels-idx1-ubyte.gz'), 'wb') as f:
        f.write(header + bytes(4))
        for _ in range(100):
            f.write(bytes(2**20))
    tracemalloc.start()
    try:
        usage_error(
            lambda: fashion_mnist.load_data(str(tmp_path)),
            't10k-labels-idx1-ubyte.gz',
            '%d bytes of data, the header (4) says 4' % (4 + 100 * 2**20),
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_fashion_header_declaring_more_than_the_file_can_hold_is_refused_before_reading(
    tmp_path,
):
    write_fashion(tmp_path, gz=False)
    raw = struct.pack('>IIII', 0x803, 2**32 - 1, 28, 28) + bytes(784)
    write_bytes(tmp_path / 'train-images-idx3-ubyte', raw)
    usage_error(
        lambda: fashion_mnist.load_data(str(tmp_path)),
        'train-images-idx3-ubyte',
        'more than the file can hold',
    )


def test_fashion_count_mismatch_names_both_files(tmp_path):
    write_fashion(tmp_path)
    write_bytes(tmp_path / 't10k-labels-idx1-ubyte.gz', idx_bytes(np.zeros(3, np.uint8)))
    usage_error(
        lambda: fashion_mnist.load_data(str(tmp_path)),
        't10k-images-idx3-ubyte.gz',
        't10k-labels-idx1-ubyte.gz',
        '4 images but 3 labels',
    )


def test_fashion_label_out_of_range(tmp_path):
    write_fashion(tmp_path)
    write_bytes(
        tmp_path / 'train-labels-idx1-ubyte.gz',
        idx_bytes(np.array([0, 1, 2, 3, 10, 255], np.uint8)),
    )
    usage_error(
        lambda: fashion_mnist.load_data(str(tmp_path)),
        'train-labels-idx1-ubyte.gz',
        'label 10 outside [0, 10) (2 such labels)',
    )


def test_fashion_corrupt_deflate_stream(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / 'train-images-idx3-ubyte.gz'
    raw = bytearray(path.read_bytes())
    for i in range(20, len(raw) - 8):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    usage_error(
        lambda: fashion_mnist.load_data(str(tmp_path)),
        'train-images-idx3-ubyte.gz',
        'truncated or not in the expected format',
    )


def test_fashion_plain_file_under_gz_name(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / 'train-labels-idx1-ubyte.gz').write_bytes(idx_bytes(np.zeros(6, np.uint8)))
    usage_error(
        lambda: fashion_mnist.load_data(str(tmp_path)),
        'train-labels-idx1-ubyte.gz',
        'truncated or not in the expected format',
    )
