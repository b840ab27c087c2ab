"""Decoding a scanned image folder (``dataset.folder.scan``) into the arrays of a
run, and a trained model's test images. Files that cannot be decoded are left out
and listed; more than 1 % of them stops the run with one line.
"""

import os
import shutil
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from dataset import image_cache, images
from dataset.common import to_unit_float
from dataset.folder import HELP, Layout, class_files, listing
from sesemi_base.errors import UsageError

MAX_BAD_FRACTION = 0.01


class Loaded(NamedTuple):
    """A decoded folder dataset.

    Attributes:
        channels: 1 when every decoded image is gray, else 3.
        x_train: uint8 labeled training images followed by the unlabeled ones.
        y_train: int64 labels of the labeled images (the first ``len(y_train)`` rows).
        x_test: float32 test images in [0, 1].
        y_test: int64 test labels.
        split: what split.json records about the files (relative to ROOT).
        skipped: '<path>: <reason>' of each file left out.
    """

    channels: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    split: Dict
    skipped: List[str]


def load(layout: Layout, size: int, cache: Optional[str], progress: bool = True) -> Loaded:
    """Decodes every file of ``layout`` (through the cache) and assembles the sets.

    Args:
        layout: from ``scan``.
        size: the side of the square images.
        cache: the decode cache folder; None decodes in memory.
        progress: show decoding progress on stderr.

    Raises:
        UsageError: more than 1 % of the image files cannot be decoded, or a class
            or the test set is left without images. A cache folder this call
            created is removed again.
    """
    # Labeled training files, then unlabeled, then test: the training set is one slice.
    paths = [p for p, _ in layout.train] + layout.unlabeled + [p for p, _ in layout.test]
    created = _first_missing(cache) if cache else None
    print(
        'Image folder %s: %d classes; image files: %d labeled for training, %d for testing '
        '(%s), %d unlabeled%s'
        % (
            layout.root,
            len(layout.class_names),
            len(layout.train),
            len(layout.test),
            'held out of labeled/' if layout.held_out else 'test/',
            len(layout.unlabeled),
            '; %d other files ignored' % layout.ignored if layout.ignored else '',
        )
    )
    try:
        decoded = image_cache.decode(
            [os.path.join(layout.root, p) for p in paths], size, cache, progress
        )
        _check_bad(layout, paths, decoded)
    except OSError as err:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        if cache and err.filename and os.path.abspath(err.filename).startswith(cache):
            raise UsageError(
                "cannot write the image cache '%s' (%s); pass a writable --cache or "
                '--result' % (cache, err.strerror or err)
            ) from err
        raise
    except UsageError:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    print(
        'Decoded %d images in %.1f s (%.0f images/s)%s'
        % (
            decoded.decoded,
            decoded.seconds,
            decoded.decoded / max(decoded.seconds, 1e-9),
            ', %d from the cache %s' % (len(paths) - decoded.decoded, cache) if cache else '',
        )
    )
    channels = 1 if decoded.gray.all() else 3
    pixels = decoded.pixels[..., :1] if channels == 1 else decoded.pixels

    n_train, n_unlabeled = len(layout.train), len(layout.unlabeled)
    train_ok = decoded.ok[:n_train]
    unlabeled_ok = decoded.ok[n_train : n_train + n_unlabeled]
    test_ok = decoded.ok[n_train + n_unlabeled :]
    n_pool = int(train_ok.sum() + unlabeled_ok.sum())
    y_train = np.array([c for _, c in layout.train], np.int64)[train_ok]
    y_test = np.array([c for _, c in layout.test], np.int64)[test_ok]
    for label, name in enumerate(layout.class_names):
        if not (y_train == label).any():
            raise UsageError(
                "class '%s' has no readable training image; add images, %s" % (name, HELP)
            )
    if not len(y_test):
        raise UsageError(
            "no test image of '%s' is readable; add test images, %s" % (layout.root, HELP)
        )
    split = {
        'root': os.path.abspath(layout.root),
        'class_names': list(layout.class_names),
        'image_size': size,
        'test_source': 'held_out' if layout.held_out else 'test',
        'train_files': [p for (p, _), good in zip(layout.train, train_ok) if good],
        'test_files': [[p, c] for (p, c), good in zip(layout.test, test_ok) if good],
        'unlabeled_images': int(unlabeled_ok.sum()),
    }
    skipped = ['%s: %s' % (os.path.relpath(path, layout.root), why) for path, why in decoded.bad]
    return Loaded(
        channels, pixels[:n_pool], y_train, to_unit_float(pixels[n_pool:]), y_test, split, skipped
    )


def _first_missing(path: str) -> Optional[str]:
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _check_bad(layout: Layout, paths: Sequence[str], decoded) -> None:
    """Stops when more than MAX_BAD_FRACTION of the files cannot be decoded."""
    bad = len(decoded.bad)
    if bad > MAX_BAD_FRACTION * len(paths):
        first, why = decoded.bad[0]
        raise UsageError(
            "%d of the %d image files in '%s' cannot be decoded (more than %g %%), "
            "e.g. '%s' (%s); replace or remove them"
            % (bad, len(paths), layout.root, 100 * MAX_BAD_FRACTION, first, why)
        )


def load_test(
    root: str, split: Dict, shape: Tuple[int, int, int], class_names: Sequence[str]
) -> Tuple[np.ndarray, np.ndarray]:
    """The test set of a trained model: test/ if ROOT has one, else the held-out files
    listed in its split.json; decoded by the 'crop' rule to the model's shape.

    Raises:
        UsageError: test/ classes differ from the model's, or no test file is
            readable (unreadable ones are skipped with a warning, as in training).
    """
    if not os.path.isdir(root):
        raise UsageError(
            "image folder '%s' does not exist; pass --dataset=ROOT, the folder the "
            'model was trained on' % root
        )
    if os.path.isdir(os.path.join(root, 'test')):
        names, files, _ = class_files(root, 'test')
        if tuple(names) != tuple(class_names):
            raise UsageError(
                "folder '%s' has class folders %s, the model's classes are %s; "
                'pass the ROOT the model was trained on'
                % (os.path.join(root, 'test'), listing(names), listing(class_names))
            )
    else:
        files = [(p, int(c)) for p, c in split.get('test_files', [])]
        if any(not 0 <= c < len(class_names) for _, c in files):
            raise UsageError(
                'the split.json of the model lists a test file of class %d; the model has %d '
                'classes; restore the split.json the training run wrote'
                % (next(c for _, c in files if not 0 <= c < len(class_names)), len(class_names))
            )
        if split.get('test_source') != 'held_out' or not files:
            raise UsageError(
                "image folder '%s' has no test/ folder and split.json lists no "
                'held-out files; pass the ROOT the model was trained on' % root
            )
    pixels, labels, bad = [], [], []
    for path, label in files:
        try:
            pixels.append(images.read_pixels(os.path.join(root, path), shape, 'crop'))
            labels.append(label)
        except images.DECODE_ERRORS as err:
            bad.append('%s (%s)' % (path, images.reason(err)))
    if bad:  # training left these out too
        print(
            'warning: skipped %d unreadable test image(s): %s' % (len(bad), ', '.join(bad)),
            file=sys.stderr,
        )
    if not pixels:
        raise UsageError(
            "no test image of '%s' is readable; pass the ROOT the model was trained on" % root
        )
    return to_unit_float(np.stack(pixels)), np.array(labels, np.int64)
