"""What a model's inputs are made of: the preprocessing a model file carries.

``Preprocessing`` describes how a trained network's inputs were made from [0, 1]
images (GCN, then the training set's ZCA) and what its outputs mean (dataset, class
names), applies it in numpy or as TensorFlow ops, and writes and reads it as the
attributes and datasets of an HDF5 group (``model_io`` lays out the file).
"""

import json
from typing import Optional, Sequence

import numpy as np

import dataset
from dataset import fashion_mnist
from dataset.images import ALPHA_RULE, RESIZE_RULES
from utils import ZCA, global_contrast_normalize

# Version 2 added 'resize' (absent means 'stretch'). Files of 'stretch' models are still
# written as version 1, which earlier code reads correctly; 'crop' models need version 2.
FORMAT_VERSION = 2
GCN_SCALE = 55.0  # the reference's global contrast normalisation scale
GCN_EPS = 1e-10
PAD = {'fashion_mnist': fashion_mnist.PAD}  # datasets stored with a zero border


class Preprocessing:
    """How the model's inputs were made from [0, 1] images, and what they mean.

    Attributes:
        data: the dataset the model was trained on (``dataset.DATASETS`` key).
        n_classes: classes of the softmax output.
        input_shape: one model input, H×W×C.
        class_names: one name per class, in label order.
        hflip: whether the dataset's dense evaluation uses left-right flips.
        seed: the training run's seed (its final evaluation's dense views).
        zca: the ZCA fitted on the training set, or None.
        gcn_scale: the L2 norm GCN gives each image.
        pad: the zero border around the dataset's source images (pixels per side).
        resize: the resize rule of ``dataset.images`` for images of another size.
    """

    def __init__(
        self,
        data: str,
        n_classes: int,
        input_shape: Sequence[int],
        class_names: Sequence[str],
        hflip: bool,
        seed: int,
        zca: Optional[ZCA] = None,
        gcn_scale: float = GCN_SCALE,
        pad: int = 0,
        resize: str = 'stretch',
    ):
        self.data = data
        self.n_classes = int(n_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.class_names = tuple(class_names)
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.zca = zca
        self.gcn_scale = float(gcn_scale)
        self.pad = int(pad)
        if resize not in RESIZE_RULES:
            raise ValueError('resize rule %r, expected one of %s' % (resize, RESIZE_RULES))
        self.resize = resize

    @classmethod
    def for_dataset(
        cls, info: 'dataset.DatasetInfo', zca: Optional[ZCA], seed: int
    ) -> 'Preprocessing':
        """The preprocessing of a training run.

        Args:
            info: the run's dataset description (``dataset.describe``, ``dataset.load_run``).
            zca: the whitening fitted on the run's training set (None if the run has none).
            seed: the run's seed.
        """
        if info.zca != (zca is not None):
            raise ValueError('dataset %s %s ZCA' % (info.name, 'needs' if info.zca else 'has no'))
        return cls(
            info.name,
            info.n_classes,
            info.shape,
            info.class_names,
            info.hflip,
            seed,
            zca,
            GCN_SCALE,
            PAD.get(info.name, 0),
            info.resize,
        )

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Model input from N×H×W×C images in [0, 1]: GCN, then ZCA if the model has one.

        Raises:
            ValueError: the images do not have the model's input shape.
        """
        if images.shape[1:] != self.input_shape:
            raise ValueError(
                'images of shape %s, the model takes %s' % (images.shape[1:], self.input_shape)
            )
        x = global_contrast_normalize(images, self.gcn_scale, GCN_EPS)
        return x if self.zca is None else self.zca(x)

    def apply_tf(self, images):
        """``apply`` as TensorFlow ops, for exported graphs (TF 1.15 and 2.x alike).

        Same formulas: x ← s·(x − mean(x)) / ‖x − mean(x)‖₂ per image (norms below
        GCN_EPS count as 1), then (x − μ)·W with the stored ZCA constants.
        """
        from sesemi_base.compat import tf

        size = int(np.prod(self.input_shape))
        flat = tf.reshape(images, [-1, size])
        flat = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
        norms = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1, keepdims=True))
        norms = tf.where(norms < GCN_EPS, tf.ones_like(norms), norms)
        flat = self.gcn_scale * flat / norms
        if self.zca is not None:
            flat = tf.matmul(flat - tf.constant(self.zca.mean), tf.constant(self.zca.matrix))
        return tf.reshape(flat, [-1] + list(self.input_shape))

    def describe(self) -> dict:
        """The metadata as a JSON-ready dict (without the ZCA arrays)."""
        return {
            'data': self.data,
            'n_classes': self.n_classes,
            'input_shape': list(self.input_shape),
            'class_names': list(self.class_names),
            'gcn_scale': self.gcn_scale,
            'zca': self.zca is not None,
            'hflip': self.hflip,
            'seed': self.seed,
            'pad': self.pad,
            'resize': self.resize,
            'alpha': ALPHA_RULE,
        }

    def write(self, group) -> None:
        """Stores the preprocessing in an h5py group."""
        attrs = group.attrs
        attrs['format_version'] = FORMAT_VERSION if self.resize != 'stretch' else 1
        attrs['data'] = self.data
        attrs['n_classes'] = self.n_classes
        attrs['input_shape'] = np.asarray(self.input_shape, np.int64)
        attrs['class_names'] = json.dumps(list(self.class_names))
        attrs['gcn_scale'] = self.gcn_scale
        attrs['zca'] = np.bool_(self.zca is not None)
        attrs['hflip'] = np.bool_(self.hflip)
        attrs['seed'] = self.seed
        attrs['pad'] = self.pad
        attrs['resize'] = self.resize
        attrs['alpha'] = ALPHA_RULE
        if self.zca is not None:
            group.create_dataset('zca_mean', data=self.zca.mean)
            group.create_dataset('zca_matrix', data=self.zca.matrix)

    @classmethod
    def read(cls, group) -> 'Preprocessing':
        """Reads what ``write`` stored.

        Raises:
            KeyError, ValueError, TypeError: a missing or malformed entry.
        """
        attrs = group.attrs
        if int(attrs['format_version']) > FORMAT_VERSION:
            raise ValueError(
                'format version %d is newer than this code (%d)'
                % (int(attrs['format_version']), FORMAT_VERSION)
            )
        shape = tuple(int(d) for d in np.asarray(attrs['input_shape']).reshape(-1))
        names = json.loads(text(attrs['class_names']))
        n_classes = int(attrs['n_classes'])
        if len(shape) != 3 or min(shape) < 1 or len(names) != n_classes:
            raise ValueError(
                'input_shape %s or %d class names for %d classes' % (shape, len(names), n_classes)
            )
        if text(attrs.get('alpha', ALPHA_RULE)) != ALPHA_RULE:
            raise ValueError(
                'alpha rule %r, this code knows %r' % (text(attrs['alpha']), ALPHA_RULE)
            )
        zca = None
        if bool(attrs['zca']):
            size = int(np.prod(shape))
            mean, matrix = np.asarray(group['zca_mean']), np.asarray(group['zca_matrix'])
            if mean.shape != (size,) or matrix.shape != (size, size):
                raise ValueError(
                    'ZCA arrays of shapes %s and %s for %d values per image'
                    % (mean.shape, matrix.shape, size)
                )
            zca = ZCA(mean, matrix)
        return cls(
            text(attrs['data']),
            n_classes,
            shape,
            names,
            bool(attrs['hflip']),
            int(attrs['seed']),
            zca,
            float(attrs['gcn_scale']),
            int(attrs.get('pad', 0)),
            text(attrs.get('resize', 'stretch')),
        )


def text(value) -> str:
    """An HDF5 string attribute as str (h5py returns bytes for fixed-length strings)."""
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)
