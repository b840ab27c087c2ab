"""CIFAR-10, python version: data_batch_1..data_batch_5 (50,000 training images)
and test_batch (10,000 test images), as in cifar-10-python.tar.gz.

Each file is a pickle of a dict whose 'data' is a uint8 N×3072 array, one image
per row stored channel-major (the 32×32 red plane row by row, then green, then
blue), and whose 'labels' is a list of N class indices. The pickling code here
also serves CIFAR-100, which uses the same layout.
"""

import codecs
import functools
import io
import pickle
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from dataset.common import as_labels, check_labels, find_files, read_file, to_unit_float

TITLE = 'CIFAR-10'
FILES = (
    'data_batch_1',
    'data_batch_2',
    'data_batch_3',
    'data_batch_4',
    'data_batch_5',
    'test_batch',
)
CLASS_NAMES = (
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
)

# The only globals that pickled numpy arrays, lists and dicts refer to (Python 2
# and 3, numpy 1 and 2, protocols 2 to 5). Anything else is refused, so that a
# crafted file cannot run code when it is loaded.
_PICKLE_GLOBALS = frozenset(
    [
        ('numpy', 'ndarray'),
        ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'),
        ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'),
        ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'),
        ('numpy._core.numeric', '_frombuffer'),
        ('_codecs', 'encode'),
        ('copy_reg', '_reconstructor'),
        ('copyreg', '_reconstructor'),
        ('__builtin__', 'object'),
        ('builtins', 'object'),
        ('__builtin__', 'bytes'),
        ('builtins', 'bytes'),
        ('__builtin__', 'bytearray'),
        ('builtins', 'bytearray'),
    ]
)


def _refuse(what: str):
    raise pickle.UnpicklingError('it %s, which a dataset file does not' % what)


def _ndarray(*args, **kwargs):
    """Stands for numpy.ndarray, which a dataset file names only as the type that
    ``_reconstruct`` makes: called, it would allocate any size it is given."""
    _refuse('calls numpy.ndarray')


def _reconstruct(reconstruct):
    """The ``_reconstruct`` of numpy for what numpy writes, an empty ndarray that the
    pickle's state then fills (and checks against its data)."""

    def call(subtype, shape, dtype):
        if subtype is not _ndarray or tuple(shape) != (0,):
            _refuse('reconstructs a %r of shape %r' % (subtype, shape))
        return reconstruct(np.ndarray, shape, dtype)

    return call


def _from_bytes(kind):
    """The bytes or bytearray type: empty, or of bytes, or of a string and its encoding; never of a
    size."""

    def call(*args):
        if args and not isinstance(args[0], (bytes, bytearray, str)):
            _refuse('builds %s of a %s' % (kind.__name__, type(args[0]).__name__))
        return kind(*args)

    return call


def _latin1(text, encoding='utf-8', errors='strict'):
    """``_codecs.encode`` as Python 2 strings are pickled: latin-1 only (other codecs
    can be slow or large)."""
    try:
        known = codecs.lookup(encoding).name
    except (LookupError, TypeError):  # no such codec (a damaged name), or not a string
        known = None
    if not isinstance(text, str) or known != 'iso8859-1':
        _refuse('encodes with %r' % (encoding,))
    return codecs.encode(text, encoding, errors)


def _dtype_state_is_plain(dtype: np.dtype, state: Any) -> bool:
    """Whether ``state`` is the state numpy pickles for ``dtype`` (its byte order
    aside): the state of a dtype sets its flags and item size, so a damaged one
    could mark plain bytes as object references, which numpy would then follow."""
    plain = dtype.__reduce__()[2]
    if not isinstance(state, tuple) or len(state) != len(plain):
        return False
    if any(type(a) is not type(b) for a, b in zip(state, plain)):
        return False
    same_order = state[1] == plain[1] or {state[1], plain[1]} == {'<', '>'}
    return same_order and state[:1] + state[2:] == plain[:1] + plain[2:]


class _ArrayUnpickler(pickle._Unpickler):
    """An unpickler that only builds numpy arrays and plain Python containers.

    The pure-Python unpickler, reading from memory: the C one allocates whatever
    size a (damaged) pickle declares for a bytes object or its memo before it finds
    that the file is shorter, so a few bytes could ask for terabytes.
    """

    def load_build(self) -> None:
        """BUILD, refused for a dtype whose state is not the one numpy writes (checked
        before it applies: ``numpy.dtype('u1', False, False)`` is numpy's own uint8)."""
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, np.dtype) and not _dtype_state_is_plain(target, state):
            _refuse('gives the dtype %s a state numpy does not write' % target)
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                'it refers to %s.%s, which a dataset file does not' % (module, name)
            )
        if name == 'ndarray':
            return _ndarray
        if name in ('bytes', 'bytearray'):
            return _from_bytes(bytes if name == 'bytes' else bytearray)
        if name == 'encode':
            return _latin1
        if module.startswith('numpy._core') and not hasattr(np, '_core'):
            module = module.replace('numpy._core', 'numpy.core')  # written by numpy 2, read by 1.x
        found = super().find_class(module, name)
        return _reconstruct(found) if name == '_reconstruct' else found


def _entries(obj: Any) -> Dict[str, Any]:
    """The unpickled dict with its keys as str (Python 3 pickles may use bytes)."""
    if not isinstance(obj, dict):
        raise ValueError('it holds a %s, expected a dict' % type(obj).__name__)
    return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: str, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python batch.

    Args:
        path: the pickle file.
        label_key: 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100).

    Returns:
        uint8 images N×32×32×3 and int64 labels (not yet range-checked).

    Raises:
        ValueError: the dict lacks a key or its data has the wrong type or shape;
            pickle, EOF and OS errors propagate (``dataset.common.read_file`` reports them).
    """
    with open(path, 'rb') as f:
        raw = f.read()
    entries = _entries(_ArrayUnpickler(io.BytesIO(raw), encoding='latin1').load())
    for key in ('data', label_key):
        if key not in entries:
            raise ValueError("no '%s' entry" % key)
    data = entries['data']
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        raise ValueError("'data' is %s, expected a uint8 Nx3072 array" % _describe(data))
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, as_labels(entries[label_key])


def _describe(value: Any) -> str:
    """A short description of a value: dtype and shape for arrays, else the type."""
    if isinstance(value, np.ndarray):
        return '%s %s' % (value.dtype, 'x'.join(str(d) for d in value.shape))
    return 'a %s' % type(value).__name__


def load_split(
    paths: Sequence[str], label_key: str, n_classes: int, title: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Reads, checks and concatenates the batches of one split.

    Args:
        paths: the batch files, in order.
        label_key: the dict key of the labels.
        n_classes: labels must lie in [0, n_classes).
        title: the dataset's name for messages.

    Returns:
        float32 images N×32×32×3 in [0, 1] and int64 labels.

    Raises:
        UsageError: a batch is unreadable, malformed, or has bad labels.
    """
    images: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    for path in paths:
        x, y = read_file(path, functools.partial(read_batch, label_key=label_key), title)
        check_labels(len(x), y, n_classes, title, "file '%s'" % path)
        images.append(x)
        labels.append(y)
    return to_unit_float(np.concatenate(images)), np.concatenate(labels)


def load_data(folder: str) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Loads CIFAR-10 from the folder of the python version.

    Args:
        folder: holds data_batch_1..data_batch_5 and test_batch.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 N×32×32×3 in [0, 1],
        int64 labels in [0, 10).

    Raises:
        UsageError: missing folder or file, bad file, bad labels.
    """
    paths = find_files(folder, TITLE, FILES)
    train = load_split(paths[:5], 'labels', len(CLASS_NAMES), TITLE)
    test = load_split(paths[5:], 'labels', len(CLASS_NAMES), TITLE)
    return train, test
