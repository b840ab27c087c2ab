"""CIFAR-100, python version: the files train (50,000 images) and test (10,000),
as in cifar-100-python.tar.gz.

Same pickle layout as CIFAR-10 (see ``dataset.cifar10``), with 'fine_labels'
(100 classes, used here) and 'coarse_labels' (20 superclasses, unused).
"""

from typing import Tuple

import numpy as np

from dataset.cifar10 import load_split
from dataset.common import find_files

TITLE = 'CIFAR-100'
FILES = ('train', 'test')
# The fine label names in label order, as in the archive's 'meta' file.
CLASS_NAMES = (
    'apple',
    'aquarium_fish',
    'baby',
    'bear',
    'beaver',
    'bed',
    'bee',
    'beetle',
    'bicycle',
    'bottle',
    'bowl',
    'boy',
    'bridge',
    'bus',
    'butterfly',
    'camel',
    'can',
    'castle',
    'caterpillar',
    'cattle',
    'chair',
    'chimpanzee',
    'clock',
    'cloud',
    'cockroach',
    'couch',
    'crab',
    'crocodile',
    'cup',
    'dinosaur',
    'dolphin',
    'elephant',
    'flatfish',
    'forest',
    'fox',
    'girl',
    'hamster',
    'house',
    'kangaroo',
    'keyboard',
    'lamp',
    'lawn_mower',
    'leopard',
    'lion',
    'lizard',
    'lobster',
    'man',
    'maple_tree',
    'motorcycle',
    'mountain',
    'mouse',
    'mushroom',
    'oak_tree',
    'orange',
    'orchid',
    'otter',
    'palm_tree',
    'pear',
    'pickup_truck',
    'pine_tree',
    'plain',
    'plate',
    'poppy',
    'porcupine',
    'possum',
    'rabbit',
    'raccoon',
    'ray',
    'road',
    'rocket',
    'rose',
    'sea',
    'seal',
    'shark',
    'shrew',
    'skunk',
    'skyscraper',
    'snail',
    'snake',
    'spider',
    'squirrel',
    'streetcar',
    'sunflower',
    'sweet_pepper',
    'table',
    'tank',
    'telephone',
    'television',
    'tiger',
    'tractor',
    'train',
    'trout',
    'tulip',
    'turtle',
    'wardrobe',
    'whale',
    'willow_tree',
    'wolf',
    'woman',
    'worm',
)


def load_data(folder: str) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Loads CIFAR-100 (fine labels) from the folder of the python version.

    Args:
        folder: holds the files train and test.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 N×32×32×3 in [0, 1],
        int64 labels in [0, 100).

    Raises:
        UsageError: missing folder or file, bad file, bad labels.
    """
    train_path, test_path = find_files(folder, TITLE, FILES)
    n_classes = len(CLASS_NAMES)
    return (
        load_split([train_path], 'fine_labels', n_classes, TITLE),
        load_split([test_path], 'fine_labels', n_classes, TITLE),
    )
