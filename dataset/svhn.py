"""SVHN, cropped-digits format: train_32x32.mat (73,257 images) and test_32x32.mat
(26,032 images). The 531,131 'extra' images are not used.

Each file is a MATLAB (v5) file with 'X', uint8 32×32×3×N (row, column,
channel, image), and 'y', N×1 digit labels where the digit 0 is stored as 10.
"""

from typing import Tuple

import numpy as np
import scipy.io

from dataset.common import as_labels, check_labels, find_files, read_file, to_unit_float

try:
    from scipy.io.matlab import MatReadError
except ImportError:  # scipy < 1.8
    from scipy.io.matlab.miobase import MatReadError

TITLE = 'SVHN'
FILES = ('train_32x32.mat', 'test_32x32.mat')
CLASS_NAMES = tuple(str(d) for d in range(10))


def read_mat(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one SVHN .mat file.

    Args:
        path: the .mat file.

    Returns:
        uint8 images N×32×32×3 and int64 labels with 10 mapped to 0 (not yet
        range-checked).

    Raises:
        ValueError: not a MATLAB file, missing variable, wrong type or shape;
            other scipy.io errors propagate (``dataset.common.read_file`` reports them).
    """
    try:
        mat = scipy.io.loadmat(path)
    except MatReadError as exc:
        raise ValueError(str(exc) or 'not a MATLAB file') from exc
    for key in ('X', 'y'):
        if key not in mat:
            raise ValueError("no variable '%s'" % key)
    x = mat['X']
    if (
        not isinstance(x, np.ndarray)
        or x.dtype != np.uint8
        or x.ndim != 4
        or x.shape[:3] != (32, 32, 3)
    ):
        shape = 'x'.join(str(d) for d in getattr(x, 'shape', ()))
        raise ValueError(
            "'X' is %s %s, expected uint8 32x32x3xN"
            % (getattr(x, 'dtype', type(x).__name__), shape)
        )
    labels = as_labels(mat['y'])
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def _load_split(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads and checks one file: float32 N×32×32×3 images and int64 labels."""
    images, labels = read_file(path, read_mat, TITLE)
    check_labels(len(images), labels, len(CLASS_NAMES), TITLE, "file '%s'" % path)
    return to_unit_float(images), labels


def load_data(folder: str) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Loads SVHN (cropped digits, without 'extra').

    Args:
        folder: holds train_32x32.mat and test_32x32.mat.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 N×32×32×3 in [0, 1],
        int64 labels in [0, 10), the digit itself.

    Raises:
        UsageError: missing folder or file, bad file, bad labels.
    """
    train_path, test_path = find_files(folder, TITLE, FILES)
    return _load_split(train_path), _load_split(test_path)
