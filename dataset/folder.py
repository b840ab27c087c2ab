"""Your own images: class folders of labeled images, optionally a folder of
unlabeled images and a folder of test images.

    ROOT/labeled/<class name>/...   image files, one folder per class; class names
                                    and label order from the sorted folder names
    ROOT/unlabeled/...              optional, any depth; joins the proxy task's pool
                                    in --mode=sesemi
    ROOT/test/<class name>/...      optional, the same class folders as labeled/;
                                    without it a stratified --test_fraction of the
                                    labeled images is held out (seed 1)

Files of any depth below these folders are read when their extension is one of
``images.IMAGE_EXTENSIONS``; other files are ignored and counted. Images of any
size and mode are brought to --image_size squares by the 'crop' rule of
``dataset.images`` (alpha composited on black) and decoded once into the cache of
``dataset.image_cache``. The images have 1 channel when every file is gray, else 3.
Files that cannot be decoded are left out with one warning, unless more than 1 %
of them are bad (``dataset.folder_images`` decodes what ``scan`` finds here).
"""

import os
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from dataset.images import is_image_file
from sesemi_base.errors import UsageError

SPLIT_SEED = 1  # the held-out split uses the labeled split's reference seed
MIN_IMAGE_SIZE = 8
# SESEMI mode's default epochs: as many pool images as 30 epochs over a 50,000-image
# pool (the benchmark datasets' setting), at most 30 epochs, at least 1.
SESEMI_POOL_IMAGES = 30 * 50000
MAX_SESEMI_EPOCHS = 30
HELP = 'see docs/own-images.md'

Labeled = List[Tuple[str, int]]  # (path relative to ROOT, class index)


class Layout(NamedTuple):
    """The files of a folder dataset, before any is decoded.

    Attributes:
        root: the ROOT folder.
        class_names: the sorted class folder names of labeled/.
        train: labeled training files (relative to root) with their labels.
        test: test files with their labels (test/ or held out of labeled/).
        unlabeled: the unlabeled files.
        held_out: whether the test files were held out of labeled/.
        ignored: how many files were not images.
    """

    root: str
    class_names: Tuple[str, ...]
    train: Labeled
    test: Labeled
    unlabeled: List[str]
    held_out: bool
    ignored: int


def _walk(root: str, folder: str) -> Tuple[List[str], int]:
    """Image files below ``folder`` (any depth) relative to ``root``, sorted, and the
    number of other files."""
    found, ignored = [], 0
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if is_image_file(name):
                found.append(os.path.relpath(os.path.join(parent, name), root))
            else:
                ignored += 1
    return found, ignored


def _class_folders(folder: str) -> List[str]:
    return sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))


def class_files(root: str, part: str) -> Tuple[List[str], Labeled, int]:
    """The class folders of ROOT/part and their image files."""
    folder = os.path.join(root, part)
    names = _class_folders(folder)
    files, ignored = (
        [],
        sum(1 for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))),
    )
    for label, name in enumerate(names):
        found, skipped = _walk(root, os.path.join(folder, name))
        files.extend((path, label) for path in found)
        ignored += skipped
        if not found and part == 'labeled':
            raise UsageError(
                "class folder '%s' holds no image files (%s); add images or remove "
                'the folder, %s' % (os.path.join(folder, name), _extensions(), HELP)
            )
    return names, files, ignored


def _extensions() -> str:
    from dataset.images import IMAGE_EXTENSIONS

    return ', '.join(e[1:].upper() for e in IMAGE_EXTENSIONS)


def hold_out(
    files: Labeled, n_classes: int, fraction: float, names: Sequence[str], seed: int = SPLIT_SEED
) -> Tuple[Labeled, Labeled]:
    """Stratified split of labeled files into (train, test).

    One RandomState(seed) is shared across classes; for class c = 0..K−1 in order,
    its files (sorted) are shuffled and the first max(1, round(fraction·n_c)) are
    held out. Both parts keep the sorted order.

    Raises:
        UsageError: a class with too few images to hold one out and keep one.
    """
    rng = np.random.RandomState(seed)
    test = set()
    for label in range(n_classes):
        members = [i for i, (_, c) in enumerate(files) if c == label]
        count = max(1, int(round(fraction * len(members))))
        if len(members) - count < 1:
            raise UsageError(
                "class '%s' has %d labeled image(s); holding out --test_fraction=%g "
                'leaves none to train on: add images, lower --test_fraction or give '
                'a test/ folder, %s' % (names[label], len(members), fraction, HELP)
            )
        order = np.array(members)
        rng.shuffle(order)
        test.update(order[:count].tolist())
    return (
        [f for i, f in enumerate(files) if i not in test],
        [f for i, f in enumerate(files) if i in test],
    )


def scan(root: str, test_fraction: float) -> Layout:
    """Lists a folder dataset's files and checks its layout; decodes nothing.

    Raises:
        UsageError: ROOT or labeled/ missing, fewer than 2 classes, a class folder
            without images, test/ classes other than labeled/'s, a bad fraction.
    """
    if not root:
        raise UsageError(
            '--data=folder needs --dataset=ROOT, a folder holding '
            'ROOT/labeled/<class name>/ image folders, %s' % HELP
        )
    if not os.path.isdir(root):
        raise UsageError(
            "image folder '%s' does not exist (or is not a folder); pass "
            '--dataset=ROOT with ROOT/labeled/<class name>/ image folders, %s' % (root, HELP)
        )
    if not os.path.isdir(os.path.join(root, 'labeled')):
        raise UsageError(
            "image folder '%s' has no labeled/ folder; put each class's images in "
            '%s/<class name>/, %s' % (root, os.path.join(root, 'labeled'), HELP)
        )
    names, labeled, ignored = class_files(root, 'labeled')
    if len(names) < 2:
        raise UsageError(
            "folder '%s' holds %d class folder(s); at least 2 are needed, one "
            'folder of images per class, %s' % (os.path.join(root, 'labeled'), len(names), HELP)
        )
    test_folder = os.path.join(root, 'test')
    if os.path.isdir(test_folder):
        test_names, test, skipped = class_files(root, 'test')
        if test_names != names:
            raise UsageError(
                "folder '%s' has class folders %s, but '%s' has %s; give test/ the "
                'same class folders as labeled/, %s'
                % (
                    test_folder,
                    listing(test_names),
                    os.path.join(root, 'labeled'),
                    listing(names),
                    HELP,
                )
            )
        if not test:
            raise UsageError(
                "folder '%s' holds no image files; add test images or remove it to "
                'hold out --test_fraction of labeled/, %s' % (test_folder, HELP)
            )
        train, held_out, ignored = labeled, False, ignored + skipped
    else:
        if not 0 < test_fraction < 1:
            raise UsageError(
                '--test_fraction=%g must lie between 0 and 1 (exclusive) when '
                "'%s' has no test/ folder; pass e.g. --test_fraction=0.1 or give a "
                'test/ folder, %s' % (test_fraction, root, HELP)
            )
        train, test = hold_out(labeled, len(names), test_fraction, names)
        held_out = True
    unlabeled = []
    if os.path.isdir(os.path.join(root, 'unlabeled')):
        unlabeled, skipped = _walk(root, os.path.join(root, 'unlabeled'))
        ignored += skipped
    return Layout(root, tuple(names), train, test, unlabeled, held_out, ignored)


def listing(names: Sequence[str]) -> str:
    """Up to eight names, quoted, for a message."""
    shown = ', '.join("'%s'" % n for n in names[:8])
    return '[%s%s]' % (shown, ', ...' if len(names) > 8 else '')


def check_image_size(size: int) -> None:
    """Raises UsageError for an --image_size below MIN_IMAGE_SIZE."""
    if size < MIN_IMAGE_SIZE:
        raise UsageError(
            '--image_size=%d is below %d; pass --image_size=%d or more (images are '
            'square, e.g. 32)' % (size, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)
        )


def sesemi_epochs(pool_size: int) -> int:
    """SESEMI mode's default epochs for a pool of ``pool_size`` images (see SESEMI_POOL_IMAGES)."""
    return int(min(MAX_SESEMI_EPOCHS, max(1, round(SESEMI_POOL_IMAGES / max(1, pool_size)))))
