"""The inference model file: a Keras HDF5 model that carries its own preprocessing.

Training writes ``<result>/model.h5`` with ``save_model``: the supervised branch of
the network as an ordinary Keras HDF5 model, plus a group ``sesemi`` that holds
what a model alone needs for predict, evaluate and export:

    attrs     format_version, data (dataset name), n_classes, input_shape (H, W, C),
              class_names (JSON list), gcn_scale, zca (bool), hflip (bool), seed (of
              the run; keys the dense test views), pad (zero border the dataset adds
              around its source images, 2 for Fashion-MNIST's 28×28, else 0), resize
              (how an image of another size is brought to H×W: 'stretch', or 'crop'
              for image folders), alpha ('black': transparent pixels are composited
              on black); see dataset/images.py
    datasets  zca_mean (D,), zca_matrix (D×D), D = H·W·C, present when zca

Keras' own loader ignores the extra group, so ``keras.models.load_model`` still
reads the file. ``read_preprocessing`` reads and checks the group with h5py and
numpy only, so command-line tools can reject a bad model file before TensorFlow
loads; ``load_model`` also loads the Keras model.
"""

import json
import os
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np

import dataset
from dataset import fashion_mnist
from dataset.images import ALPHA_RULE, RESIZE_RULES
from sesemi_base.console import verbose
from sesemi_base.errors import UsageError
from utils import ZCA, global_contrast_normalize

GROUP = 'sesemi'
# Version 2 added 'resize' (absent means 'stretch'). Files of 'stretch' models are still
# written as version 1, which earlier code reads correctly; 'crop' models need version 2.
FORMAT_VERSION = 2
GCN_SCALE = 55.0  # the reference's global contrast normalisation scale
GCN_EPS = 1e-10
PAD = {'fashion_mnist': fashion_mnist.PAD}  # datasets stored with a zero border
HELP = 'pass the model.h5 that train_evaluate_asl2.py wrote to its --result folder'
# The layer classes of the networks' inference models (TF 1.15 and 2.x Keras), and the
# model classes that hold them. A model file's config is checked against them before
# Keras loads it: another class (a Lambda holds code) never reaches Keras.
LAYER_CLASSES = frozenset(
    [
        'Activation',
        'Add',
        'BatchNormalization',
        'Conv2D',
        'Dense',
        'Dropout',
        'GlobalAveragePooling2D',
        'InputLayer',
        'LeakyReLU',
        'MaxPooling2D',
        'ZeroPadding2D',
    ]
)
MODEL_CLASSES = frozenset(['Functional', 'Model'])


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
        names = json.loads(_text(attrs['class_names']))
        n_classes = int(attrs['n_classes'])
        if len(shape) != 3 or min(shape) < 1 or len(names) != n_classes:
            raise ValueError(
                'input_shape %s or %d class names for %d classes' % (shape, len(names), n_classes)
            )
        if _text(attrs.get('alpha', ALPHA_RULE)) != ALPHA_RULE:
            raise ValueError(
                'alpha rule %r, this code knows %r' % (_text(attrs['alpha']), ALPHA_RULE)
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
            _text(attrs['data']),
            n_classes,
            shape,
            names,
            bool(attrs['hflip']),
            int(attrs['seed']),
            zca,
            float(attrs['gcn_scale']),
            int(attrs.get('pad', 0)),
            _text(attrs.get('resize', 'stretch')),
        )


def _text(value) -> str:
    """An HDF5 string attribute as str (h5py returns bytes for fixed-length strings)."""
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def save_model(path: str, model, preprocessing: Preprocessing) -> None:
    """Writes the Keras inference model and its preprocessing to one HDF5 file.

    The file is written under a temporary name ending in '.h5' (the suffix makes
    Keras choose HDF5) and renamed into place once complete, so ``path`` holds
    either the previous model or the new one, never a partial file.

    Args:
        path: the model file, e.g. ``<result>/model.h5``.
        model: the Keras inference model (images in, softmax out).
        preprocessing: what turns [0, 1] images into the model's inputs.
    """
    import h5py

    tmp = '%s.tmp%d.h5' % (os.path.splitext(path)[0], os.getpid())
    try:
        with warnings.catch_warnings():
            if not verbose():  # HDF5 is the format stock Keras and Ascend's tools read
                warnings.filterwarnings(
                    'ignore', 'You are saving your model as an HDF5 file', UserWarning
                )
            model.save(tmp, include_optimizer=False)
        with h5py.File(tmp, 'a') as f:
            preprocessing.write(f.create_group(GROUP))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _keras_input_shape(config) -> Optional[Tuple[int, ...]]:
    """The input shape (without batch) recorded in a Keras model config, or None where
    the config is laid out otherwise (``load_model`` checks the loaded model)."""
    try:
        config = config['config']
        first = config['input_layers'][0]
        name = first if isinstance(first, str) else first[0]  # Keras 2: [[name, 0, 0]]
        for layer in config['layers']:
            if layer['config'].get('name', layer.get('name')) == name:
                shape = layer['config'].get('batch_input_shape') or layer['config'].get(
                    'batch_shape'
                )
                return tuple(int(d) for d in shape[1:])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        pass
    return None


class _Stored:
    """The preprocessing group's attributes and datasets, read out of the HDF5 file
    (what ``Preprocessing.read`` takes of an h5py group).

    A dataset is read only when the file can hold it: a damaged header could
    declare any size.
    """

    def __init__(self, group, file_size: int):
        self.attrs = dict(group.attrs)
        self.datasets = {}
        for name in group:
            stored = group[name]
            declared = int(np.prod(stored.shape, dtype=object)) * stored.dtype.itemsize
            if declared > file_size:
                raise ValueError('dataset %s declares %d bytes' % (name, declared))
            self.datasets[name] = stored[()]

    def __getitem__(self, name: str):
        return self.datasets[name]


def _foreign_layer(config) -> Optional[str]:
    """What in a Keras model config is outside LAYER_CLASSES and MODEL_CLASSES (a short
    description), or None.

    Raises:
        ValueError: the config is not laid out as a Keras functional model's.
    """
    if not isinstance(config, dict) or not isinstance(config.get('config'), dict):
        raise ValueError('model_config is not a Keras model config')
    if config.get('class_name') not in MODEL_CLASSES:
        return 'a model of class %s' % _quoted(config.get('class_name'))
    layers = config['config'].get('layers')
    if not isinstance(layers, list):
        raise ValueError('model_config has no list of layers')
    for layer in layers:
        name = layer.get('class_name') if isinstance(layer, dict) else None
        if name in MODEL_CLASSES:
            found = _foreign_layer(layer)
            if found:
                return found
        elif name not in LAYER_CLASSES:
            return 'a layer of class %s' % _quoted(name)
    return None


def _quoted(value) -> str:
    text = ' '.join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + '...'


def read_preprocessing(
    path: str, data: Optional[str] = None, input_shape: Optional[Sequence[int]] = None
) -> Preprocessing:
    """Checks a model file and reads its preprocessing, without TensorFlow.

    Args:
        path: the model file.
        data: if given, the dataset the model must have been trained on.
        input_shape: if given, the H×W×C the model must take.

    Returns:
        The stored Preprocessing.

    Raises:
        UsageError: missing or unreadable file, not HDF5, not a Keras model, no
            'sesemi' group, or a dataset or input shape other than asked for.
    """
    import h5py

    if not os.path.isfile(path):
        raise UsageError("model file '%s' does not exist; %s" % (path, HELP))
    try:
        if not h5py.is_hdf5(path):
            raise UsageError("model file '%s' is not an HDF5 file; %s" % (path, HELP))
        with h5py.File(path, 'r') as f:
            if 'model_config' not in f.attrs or 'model_weights' not in f:
                raise UsageError("model file '%s' holds no Keras model; %s" % (path, HELP))
            if GROUP not in f:
                raise UsageError(
                    "model file '%s' has no '%s' preprocessing group (written by an "
                    'older version?); %s' % (path, GROUP, HELP)
                )
            stored = _Stored(f[GROUP], os.path.getsize(path))
            model_config = f.attrs['model_config']
    except UsageError:
        raise
    except OSError as err:
        raise UsageError(
            "model file '%s' cannot be read (%s); %s"
            % (path, ' '.join(str(err).split())[:200], HELP)
        ) from err
    # h5py raises RuntimeError for HDF5 errors it has no other class for (a damaged
    # symbol table, say); only h5py's reading is in this try.
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise _damaged(path, err) from err
    try:
        prep = Preprocessing.read(stored)
        config = json.loads(_text(model_config))
        foreign = _foreign_layer(config)
        keras_shape = _keras_input_shape(config)
    except (KeyError, ValueError, TypeError, IndexError, OverflowError, RecursionError) as err:
        raise _damaged(path, err) from err
    if foreign is not None:
        raise UsageError(
            "model file '%s' holds %s, which SESEMI's networks do not; it is not loaded; %s"
            % (path, foreign, HELP)
        )
    if keras_shape is not None and tuple(keras_shape) != prep.input_shape:
        raise UsageError(
            "model file '%s' is inconsistent: the network takes %s images, its "
            'preprocessing makes %s; %s'
            % (path, _shape(keras_shape), _shape(prep.input_shape), HELP)
        )
    if data is not None and data != prep.data:
        raise UsageError(
            "model file '%s' was trained on %s, not %s; pass --data=%s or a %s model"
            % (path, prep.data, data, prep.data, data)
        )
    if input_shape is not None and tuple(input_shape) != prep.input_shape:
        raise UsageError(
            "model file '%s' takes %s images, not %s; pass a model for %s images"
            % (path, _shape(prep.input_shape), _shape(input_shape), _shape(input_shape))
        )
    return prep


def _damaged(path: str, err: BaseException) -> UsageError:
    return UsageError(
        "model file '%s' is damaged (%s: %s); %s"
        % (path, type(err).__name__, ' '.join(str(err).split())[:200], HELP)
    )


def _shape(shape: Sequence[int]) -> str:
    return 'x'.join(str(d) for d in shape)


def load_model(path: str, data: Optional[str] = None, input_shape: Optional[Sequence[int]] = None):
    """Loads a model file written by ``save_model``.

    Args:
        path: the model file.
        data: if given, the dataset the model must have been trained on.
        input_shape: if given, the H×W×C the model must take.

    Returns:
        (keras_model, Preprocessing).

    Raises:
        UsageError: see ``read_preprocessing``; also a file Keras cannot load, or
            whose network does not match its preprocessing.
    """
    prep = read_preprocessing(path, data, input_shape)
    from sesemi_base.compat import keras

    try:
        model = keras.models.load_model(path, compile=False)
    # RuntimeError: h5py's class for HDF5 errors of a damaged file that have no other.
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise UsageError(
            "model file '%s' cannot be loaded by Keras (%s: %s); %s"
            % (path, type(err).__name__, ' '.join(str(err).split())[:200], HELP)
        ) from err
    shape = tuple(model.input_shape[1:])
    if shape != prep.input_shape or model.output_shape[-1] != prep.n_classes:
        raise UsageError(
            "model file '%s' is inconsistent: the network maps %s images to %s "
            'classes, its preprocessing says %s and %d; %s'
            % (
                path,
                _shape(shape),
                model.output_shape[-1],
                _shape(prep.input_shape),
                prep.n_classes,
                HELP,
            )
        )
    return model, prep
