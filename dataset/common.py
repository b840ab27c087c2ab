"""What the dataset loaders share: finding the required files, reading one with
every sign of a bad file turned into one ``UsageError`` line, and the checks each
loader makes on the images and labels it read."""

import os
import pickle
import struct
import zlib
from typing import Any, Callable, List, Sequence, Tuple, TypeVar, Union

import numpy as np

from sesemi_base.errors import UsageError

T = TypeVar('T')
Split = Tuple[np.ndarray, np.ndarray]

HELP = 'see dataset/dataset.txt'

# What reading a damaged or foreign file raises in pickle, gzip, zlib, struct,
# numpy and scipy.io; gzip.BadGzipFile (Python 3.8+) is an OSError.
_FORMAT_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    NotImplementedError,
    ImportError,
    zlib.error,
    struct.error,
)


# ------------------------------------------------------------- shared helpers


def _one_line(text: str, limit: int = 200) -> str:
    """Collapses whitespace (newlines included) and shortens ``text``."""
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + '...'


def find_files(folder: str, title: str, names: Sequence[Union[str, Tuple[str, ...]]]) -> List[str]:
    """Checks that ``folder`` holds every required file, before any is read.

    Args:
        folder: the dataset folder given by the user.
        title: the dataset's name for messages, e.g. ``'CIFAR-10'``.
        names: the required file names, in order; an entry may be a tuple of
            names any one of which will do (the first is the preferred one).

    Returns:
        The path of each required file, in the order of ``names``.

    Raises:
        UsageError: the folder or one of the files does not exist.
    """
    choices = [(n,) if isinstance(n, str) else tuple(n) for n in names]
    listing = ', '.join("'%s'" % c[0] for c in choices)
    if not os.path.isdir(folder):
        raise UsageError(
            "%s folder '%s' does not exist (or is not a folder); download %s and "
            'pass the folder holding %s with --dataset=FOLDER, %s'
            % (title, folder, title, listing, HELP)
        )
    paths = []
    for choice in choices:
        found = [os.path.join(folder, n) for n in choice if os.path.isfile(os.path.join(folder, n))]
        if not found and os.path.isdir(os.path.join(folder, choice[0])):
            raise UsageError(
                "%s file '%s' is a folder; put the file %s there, %s"
                % (title, os.path.join(folder, choice[0]), choice[0], HELP)
            )
        if not found:
            alternatives = ''.join(" (or '%s')" % n for n in choice[1:])
            raise UsageError(
                "%s folder '%s' has no file '%s'%s; it must hold %s, %s"
                % (title, folder, choice[0], alternatives, listing, HELP)
            )
        paths.append(found[0])
    return paths


def read_file(path: str, reader: Callable[[str], T], title: str) -> T:
    """Runs ``reader(path)``, turning any sign of a bad file into a UsageError.

    Readers raise ValueError with a short reason for content they reject (wrong
    shape, missing key, bad magic number); the libraries they use raise the other
    exceptions in ``_FORMAT_ERRORS`` on truncated or foreign bytes.

    Args:
        path: the file to read.
        reader: parses the file at ``path``.
        title: the dataset's name for messages.

    Returns:
        Whatever ``reader`` returns.

    Raises:
        UsageError: the file cannot be opened, or is truncated or not in the
            expected format.
    """
    try:
        return reader(path)
    except OSError as exc:
        if exc.errno is not None:  # permissions and the like; gzip's format errors have none
            raise UsageError(
                "%s file '%s' cannot be read (%s); check that it is a readable "
                'file, %s' % (title, path, _one_line(exc.strerror or str(exc)), HELP)
            ) from exc
        reason = _one_line('%s: %s' % (type(exc).__name__, exc))
    except _FORMAT_ERRORS as exc:
        reason = _one_line(
            str(exc)
            if isinstance(exc, ValueError) and str(exc)
            else '%s: %s' % (type(exc).__name__, exc)
        )
    raise UsageError(
        "%s file '%s' is truncated or not in the expected format (%s); "
        'replace it with the official file, %s' % (title, path, reason, HELP)
    )


def as_labels(values: Any) -> np.ndarray:
    """Converts stored labels (a list, N, N×1 or 1×N array of integers) to int64.

    Args:
        values: the labels as stored in the file.

    Returns:
        A 1-D int64 array.

    Raises:
        ValueError: the values are not a vector of integers.
    """
    labels = np.asarray(values)
    if labels.ndim == 2 and 1 in labels.shape:
        labels = labels.reshape(-1)
    if labels.ndim != 1:
        raise ValueError('labels have shape %s, expected a vector' % (labels.shape,))
    if labels.dtype.kind == 'f':  # whole numbers that int64 holds exactly
        with np.errstate(invalid='ignore'):  # NaN and infinity are refused just below
            whole = np.isfinite(labels) & (labels == np.round(labels)) & (abs(labels) < 2.0**53)
        integers = bool(np.all(whole))
    else:
        integers = labels.dtype.kind in 'iu'
    if not integers:
        raise ValueError('labels are not integers (dtype %s)' % labels.dtype)
    return labels.astype(np.int64)


def check_labels(
    n_images: int, labels: np.ndarray, n_classes: int, title: str, source: str
) -> None:
    """The checks every loader makes on each images/labels pair it reads.

    Args:
        n_images: how many images the file (or files) held.
        labels: their labels, int64 vector.
        n_classes: labels must lie in [0, n_classes).
        title: the dataset's name for messages.
        source: the file or files, as quoted in messages, e.g. ``"file 'test_batch'"``.

    Raises:
        UsageError: no images, counts differ, or a label is out of range.
    """
    if n_images == 0:
        raise UsageError(
            '%s %s holds no images; replace it with the official file, %s' % (title, source, HELP)
        )
    if n_images != len(labels):
        raise UsageError(
            '%s %s holds %d images but %d labels; replace it with the official '
            'file, %s' % (title, source, n_images, len(labels), HELP)
        )
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if len(bad):
        raise UsageError(
            '%s %s has label %d outside [0, %d) (%d such labels); replace it with '
            'the official file, %s' % (title, source, bad[0], n_classes, len(bad), HELP)
        )


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels → float32 in [0, 1] (each value divided by 255 in float32).

    Args:
        images: uint8 array of any shape.

    Returns:
        float32 array of the same shape.
    """
    out = images.astype(np.float32)
    out /= np.float32(255)
    return out
