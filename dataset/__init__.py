"""The datasets SESEMI trains on: a registry of their descriptions and loaders.

Each benchmark loader module (``cifar10``, ``cifar100``, ``svhn``, ``fashion_mnist``)
reads the official files from one folder and returns ``(x_train, y_train), (x_test,
y_test)``: images as float32 N×32×32×C in [0, 1], labels as int64 vectors. The
``folder`` dataset is the user's own image files (``dataset.folder``); its
description (classes, image size, channels, defaults) is built from its folder and
the run's options by ``describe``, and ``load_run`` returns its training images as
uint8, labeled images followed by unlabeled ones.
Bad input never ends in a traceback: a missing folder or file, a truncated or
foreign file, mismatched counts and out-of-range labels each raise
``UsageError`` with one line that names the file and points to
``dataset/dataset.txt``, which says where each dataset comes from (the checks the
loaders share are in ``dataset.common``).

This package is pure numpy, scipy and Pillow; it does not import TensorFlow.
"""

import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from dataset import cifar10, cifar100, fashion_mnist, folder, folder_images, svhn
from dataset.common import HELP, Split
from sesemi_base.errors import UsageError
from utils import labeled_indices

ASL_EPOCHS = 300  # epochs of the labeled-only mode (the reference ModelZoo default)


class DatasetInfo(NamedTuple):
    """What the training script needs to know about one dataset.

    Attributes:
        name: the registry key, as given to ``--data``.
        n_classes: number of classes; labels lie in [0, n_classes).
        shape: one image, H×W×C.
        zca: whether the reference whitens this dataset with ZCA.
        hflip: whether horizontal flips are a valid augmentation.
        sesemi_epochs: the reference number of epochs in SESEMI mode.
        default_dir: the folder used when none is given.
        files: the file names the folder must hold.
        class_names: one name per class, in label order.
        loader: ``load_data(folder)`` of the dataset's module (None for folder data).
        resize: how an image of another size is brought to ``shape``, a rule of
            ``dataset.images`` ('stretch' or 'crop').
        default_labels: --labels when not given; None means every labeled image.
        layout: the files of a folder dataset (``folder.Layout``), else None.
    """

    name: str
    n_classes: int
    shape: Tuple[int, int, int]
    zca: bool
    hflip: bool
    sesemi_epochs: int
    default_dir: str
    files: Tuple[str, ...]
    class_names: Tuple[str, ...]
    loader: Optional[Callable[[str], Tuple[Split, Split]]]
    resize: str = 'stretch'
    default_labels: Optional[int] = 1000
    layout: Any = None


class Data(NamedTuple):
    """A dataset as one training run uses it.

    Attributes:
        info: the run's description (for folder data, with the channel count the
            decoded images have).
        train: ``(x_train, y_train)``; x_train may hold more images than y_train
            labels: the unlabeled images follow the labeled ones. float32 in
            [0, 1] for the benchmark datasets, uint8 for folder data (converted
            in the input pipeline).
        test: ``(x_test, y_test)``, float32 images in [0, 1].
        split: entries for split.json beyond the labeled indices (folder data: the files).
        skipped: one '<file>: <reason>' per image file that could not be decoded.
    """

    info: DatasetInfo
    train: Split
    test: Split
    split: Dict[str, Any]
    skipped: List[str]


def _info(
    name: str, module: Any, channels: int, zca: bool, hflip: bool, epochs: int, default_dir: str
) -> DatasetInfo:
    """Registry entry for a loader module (which owns FILES and CLASS_NAMES)."""
    return DatasetInfo(
        name=name,
        n_classes=len(module.CLASS_NAMES),
        shape=(32, 32, channels),
        zca=zca,
        hflip=hflip,
        sesemi_epochs=epochs,
        default_dir=default_dir,
        files=tuple(module.FILES),
        class_names=tuple(module.CLASS_NAMES),
        loader=module.load_data,
    )


DATASETS: Dict[str, DatasetInfo] = {
    'cifar10': _info('cifar10', cifar10, 3, True, True, 50, 'datasets/cifar-10-batches-py'),
    'cifar100': _info('cifar100', cifar100, 3, True, True, 50, 'datasets/cifar-100-python'),
    'svhn': _info('svhn', svhn, 3, False, False, 30, 'datasets/svhn'),
    'fashion_mnist': _info(
        'fashion_mnist', fashion_mnist, 1, False, True, 30, '/usr/share/datasets/fashion-mnist'
    ),
    # Built per run by ``describe``; ZCA off by default (its cost grows with (H·W·C)³).
    'folder': DatasetInfo(
        name='folder',
        n_classes=0,
        shape=(32, 32, 3),
        zca=False,
        hflip=True,
        sesemi_epochs=folder.MAX_SESEMI_EPOCHS,
        default_dir='',
        files=(),
        class_names=(),
        loader=None,
        resize='crop',
        default_labels=None,
    ),
}


def get(name: str) -> DatasetInfo:
    """The registry entry for ``name``.

    Args:
        name: one of the keys of ``DATASETS``.

    Returns:
        Its DatasetInfo.

    Raises:
        UsageError: unknown name.
    """
    if name not in DATASETS:
        raise UsageError(
            "unknown dataset '%s'; use --data= with one of %s, %s"
            % (name, ', '.join(sorted(DATASETS)), HELP)
        )
    return DATASETS[name]


def describe(
    name: str, root: Optional[str] = None, options: Optional[Dict[str, Any]] = None
) -> DatasetInfo:
    """The description of a dataset for one run: the registry entry with the run's
    choices applied, and for folder data what ``root`` holds (no image is decoded,
    so the channel count is None until ``load_run``).

    Args:
        name: one of the keys of ``DATASETS``.
        root: the dataset folder (None: ``default_dir``).
        options: the run's flags; used are ``zca`` and ``hflip`` (None: the
            dataset's default), ``image_size`` (must be the benchmark datasets'
            32) and, for folder data, ``test_fraction``, ``labels`` (checked
            against the class sizes) and ``mode`` (unlabeled/ is read in sesemi
            mode only).

    Raises:
        UsageError: unknown name; for folder data a bad layout, image size or
            number of labels.
    """
    info, options = get(name), options or {}
    if options.get('zca') is not None:
        info = info._replace(zca=bool(options['zca']))
    if options.get('hflip') is not None:
        info = info._replace(hflip=bool(options['hflip']))
    size = int(options.get('image_size') or info.shape[0])
    if info.loader is not None:
        if size != info.shape[0]:
            raise UsageError(
                '--image_size=%d: %s images are %dx%d; --image_size applies to '
                '--data=folder' % (size, name, info.shape[0], info.shape[1])
            )
        return info
    folder.check_image_size(size)
    layout = folder.scan(root or info.default_dir, float(options.get('test_fraction', 0.1)))
    if options.get('mode', 'sesemi') != 'sesemi':  # only the proxy task's pool uses unlabeled/
        layout = layout._replace(unlabeled=[])
    if options.get('labels') is not None:  # checked on the files now, before any is decoded
        labeled_indices(
            np.array([c for _, c in layout.train]), int(options['labels']), len(layout.class_names)
        )
    return info._replace(
        n_classes=len(layout.class_names),
        class_names=layout.class_names,
        shape=(size, size, None),
        layout=layout,
        sesemi_epochs=folder.sesemi_epochs(len(layout.train) + len(layout.unlabeled)),
    )


def load_run(
    info: DatasetInfo,
    root: Optional[str] = None,
    cache: Optional[str] = None,
    progress: bool = True,
) -> Data:
    """Reads the data of a run described by ``describe``.

    Args:
        info: the run's description.
        root: the dataset folder of the benchmark datasets (None: ``default_dir``).
        cache: folder data's decode cache (None: decode in memory).
        progress: show folder data's decoding progress on stderr.

    Raises:
        UsageError: missing or bad files.
    """
    if info.loader is not None:
        train, test = info.loader(info.default_dir if root is None else root)
        return Data(info, train, test, {}, [])
    loaded = folder_images.load(info.layout, info.shape[0], cache, progress)
    return Data(
        info._replace(shape=info.shape[:2] + (loaded.channels,)),
        (loaded.x_train, loaded.y_train),
        (loaded.x_test, loaded.y_test),
        loaded.split,
        loaded.skipped,
    )


def load_test(
    name: str,
    root: Optional[str],
    split: Dict[str, Any],
    shape: Tuple[int, int, int],
    class_names: Sequence[str],
) -> Split:
    """The test split a trained model is evaluated on.

    Args:
        name: the model's dataset.
        root: the dataset folder (None: the default, or for folder data the one
            the run's split.json names).
        split: the run's split.json ({} when there is none).
        shape: the model's input shape; images of folder data are decoded to it.
        class_names: the model's classes; folder data's test/ must have them.

    Returns:
        ``(x_test, y_test)``: float32 images in [0, 1] and int64 labels.

    Raises:
        UsageError: missing or bad files.
    """
    info = get(name)
    if info.loader is not None:
        return load(name, root)[1]
    if not root and split.get('root') and not os.path.isdir(split['root']):
        raise UsageError(
            "image folder '%s', named by the split.json next to the model, does not exist; "
            'pass --dataset=ROOT, the image folder the model was trained on' % split['root']
        )
    root = root or split.get('root')
    if not root:
        raise UsageError(
            'pass --dataset=ROOT, the image folder the model was trained on '
            '(no split.json next to the model names it)'
        )
    return folder_images.load_test(root, split, shape, class_names)


def load(name: str, folder: Optional[str] = None) -> Tuple[Split, Split]:
    """Loads a dataset by name; every loader checks counts and label ranges
    through ``check_labels``.

    Args:
        name: one of the keys of ``DATASETS``.
        folder: the folder holding its files; None means ``default_dir``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 N×32×32×C images in
        [0, 1] and int64 labels.

    Raises:
        UsageError: unknown name, or missing or bad files.
    """
    info = get(name)
    if info.loader is None:
        raise UsageError("dataset '%s' is read with describe() and load_run()" % name)
    return info.loader(info.default_dir if folder is None else folder)
