"""Fashion-MNIST: 60,000 training and 10,000 test images of clothing, 28×28 gray,
zero-padded by 2 pixels on each side to 32×32×1 so that the same networks fit.

The four files are in the IDX format, gzip-compressed (the uncompressed files,
named without '.gz', are accepted too): a big-endian header of a magic number
(0x00000803 for the uint8 N×28×28 images, 0x00000801 for the uint8 N labels) and
one 32-bit size per dimension, followed by the values.
"""

import functools
import gzip
import operator
import os
import struct
from typing import Tuple

import numpy as np

from dataset.common import as_labels, check_labels, find_files, read_file, to_unit_float

TITLE = 'Fashion-MNIST'
FILES = (
    'train-images-idx3-ubyte.gz',
    'train-labels-idx1-ubyte.gz',
    't10k-images-idx3-ubyte.gz',
    't10k-labels-idx1-ubyte.gz',
)
CLASS_NAMES = (
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
IMAGE_MAGIC = 0x00000803  # uint8, 3 dimensions
LABEL_MAGIC = 0x00000801  # uint8, 1 dimension
PAD = 2


# Deflate inflates a byte to at most 1032 bytes, so a gzip file of S bytes holds at most
# 1032·S bytes: a header declaring more is refused before anything is allocated for it.
MAX_INFLATION = 1032


def read_idx(path: str, magic: int) -> np.ndarray:
    """Reads an IDX file of unsigned bytes, gunzipped when the name ends in '.gz'.

    The header is read first; its declared size is checked against what the file
    can hold before the data is read, so a damaged or crafted header cannot make
    the reader allocate more than the file's data.

    Args:
        path: the file.
        magic: the expected magic number; its low byte is the number of dimensions.

    Returns:
        uint8 array with the dimensions given in the header.

    Raises:
        ValueError: wrong magic number, or a size that does not match the header;
            gzip, EOF and OS errors propagate.
    """
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    compressed = path.endswith('.gz')
    with (gzip.open if compressed else open)(path, 'rb') as f:
        head = f.read(header)
        if len(head) < header:
            raise ValueError('only %d bytes, shorter than the IDX header' % len(head))
        found = struct.unpack('>I', head[:4])[0]
        if found != magic:
            raise ValueError('magic number 0x%08x, expected 0x%08x' % (found, magic))
        dims = struct.unpack('>%dI' % ndim, head[4:])
        size = functools.reduce(operator.mul, dims, 1)  # Python ints: no overflow
        shape = 'x'.join(str(d) for d in dims)
        room = os.fstat(f.fileno()).st_size * (MAX_INFLATION if compressed else 1)
        if size > room:
            raise ValueError(
                'the header (%s) declares %d bytes of data, more than the file can hold'
                % (shape, size)
            )
        data = f.read(size + 1)
        count = len(data)
        if count > size:  # count the rest without keeping it
            count += sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b''))
    if count != size:
        raise ValueError('%d bytes of data, the header (%s) says %d' % (count, shape, size))
    return np.frombuffer(data, np.uint8).reshape(dims)


def read_images(path: str) -> np.ndarray:
    """Reads an IDX image file.

    Args:
        path: the file (gzip-compressed if its name ends in '.gz').

    Returns:
        uint8 images N×32×32×1: the 28×28 originals with a zero border of 2.

    Raises:
        ValueError: not an IDX file of 28×28 images; gzip, EOF and OS errors
            propagate (``dataset.common.read_file`` reports them).
    """
    images = read_idx(path, IMAGE_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError('images are %dx%d, expected 28x28' % images.shape[1:])
    return np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)), mode='constant')[..., None]


def read_labels(path: str) -> np.ndarray:
    """Reads an IDX label file.

    Args:
        path: the file (gzip-compressed if its name ends in '.gz').

    Returns:
        int64 labels (not yet range-checked).

    Raises:
        ValueError: not an IDX label file; gzip, EOF and OS errors propagate.
    """
    return as_labels(read_idx(path, LABEL_MAGIC))


def _load_split(images_path: str, labels_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads and checks one split: float32 N×32×32×1 images and int64 labels."""
    images = read_file(images_path, read_images, TITLE)
    labels = read_file(labels_path, read_labels, TITLE)
    check_labels(
        len(images),
        labels,
        len(CLASS_NAMES),
        TITLE,
        "files '%s' and '%s'" % (images_path, labels_path),
    )
    return to_unit_float(images), labels


def load_data(folder: str) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Loads Fashion-MNIST, padded to 32×32.

    Args:
        folder: holds the four IDX files (see FILES), gzip-compressed or not.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 N×32×32×1 in [0, 1],
        int64 labels in [0, 10).

    Raises:
        UsageError: missing folder or file, bad file, bad labels.
    """
    paths = find_files(folder, TITLE, [(name, name[: -len('.gz')]) for name in FILES])
    return _load_split(paths[0], paths[1]), _load_split(paths[2], paths[3])
