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
import subprocess
import sys
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np

from sesemi_base.console import verbose
from sesemi_base.errors import UsageError
from sesemi_tf.preprocessing import Preprocessing, text

GROUP = 'sesemi'
HELP = 'pass the model.h5 that train_evaluate_asl2.py wrote to its --result folder'
# h5py 2.10 (TF 1.15's, with HDF5 1.10.4) crashes on some damaged files, or asks for all the
# memory there is, inside HDF5 where no except clause sees it. With it, a child process with
# limited memory reads the whole file first, and a file it cannot read is refused without
# being read here. (h5py 3 with HDF5 1.14 reported an error for every damaged file the fuzz
# tests tried.)
CHILD_READ_SECONDS = 120
CHILD_OUT_OF_MEMORY, CHILD_READ_ERROR = 3, 4  # the child's exit codes
_READ_EVERYTHING = """
import os, resource, sys
size = os.path.getsize(sys.argv[1])
limit = (2 << 30) + 4 * size
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
if hard != resource.RLIM_INFINITY:
    limit = min(limit, hard)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
import h5py, numpy as np
def read(name, item):
    dict(item.attrs)
    if isinstance(item, h5py.Dataset):
        if int(np.prod(item.shape, dtype=object)) * item.dtype.itemsize <= size:
            item[()]
try:
    with h5py.File(sys.argv[1], 'r') as f:
        dict(f.attrs)
        f.visititems(read)
except MemoryError:
    sys.exit(%d)
except Exception as err:
    sys.stderr.write('%%s: %%s' %% (type(err).__name__, ' '.join(str(err).split())[:200]))
    sys.exit(%d)
""" % (CHILD_OUT_OF_MEMORY, CHILD_READ_ERROR)
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
    (what ``Preprocessing.read`` takes of an h5py group). The file's declared sizes
    are checked first (``_check_declared_sizes``).
    """

    def __init__(self, group):
        self.attrs = dict(group.attrs)
        self.datasets = {name: group[name][()] for name in group}

    def __getitem__(self, name: str):
        return self.datasets[name]


def _check_declared_sizes(f, file_size: int) -> None:
    """Refuses a dataset (a weight or the preprocessing's ZCA matrix) that declares more
    bytes than the file holds, before it is read here or by Keras: a damaged shape could
    ask for any size.

    Raises:
        ValueError: such a dataset, named.
    """

    def check(name, item):
        if hasattr(item, 'dtype'):  # a dataset
            declared = int(np.prod(item.shape, dtype=object)) * item.dtype.itemsize
            if declared > file_size:
                raise ValueError('dataset %s declares %d bytes' % (name, declared))

    f.visititems(check)


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


def _read_in_a_child(path: str, program: str = _READ_EVERYTHING) -> None:
    """Reads every attribute and dataset of the HDF5 file ``path`` in a child process.

    Raises:
        UsageError: the child died from a signal (HDF5 crashed), ran out of its memory,
            failed to read the file, or did not finish in CHILD_READ_SECONDS.
    """
    try:
        proc = subprocess.run(
            [sys.executable, '-c', program, path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=CHILD_READ_SECONDS,
        )
    except subprocess.TimeoutExpired as err:
        raise UsageError(
            "model file '%s' is damaged: HDF5 did not finish reading it in %d s; %s"
            % (path, CHILD_READ_SECONDS, HELP)
        ) from err
    if proc.returncode < 0:
        detail = ': HDF5 crashed reading it (signal %d)' % -proc.returncode
    elif proc.returncode == CHILD_OUT_OF_MEMORY:
        detail = ': HDF5 asked for more memory than a file of its size needs'
    elif proc.returncode == CHILD_READ_ERROR:
        detail = ' (%s)' % ' '.join(proc.stderr.decode('utf-8', 'replace').split())[-300:]
    else:
        return  # read, or the child failed otherwise: the caller's own reading tells
    raise UsageError("model file '%s' is damaged%s; %s" % (path, detail, HELP))


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
        if h5py.version.version_tuple[0] < 3:
            _read_in_a_child(path)
        with h5py.File(path, 'r') as f:
            if 'model_config' not in f.attrs or 'model_weights' not in f:
                raise UsageError("model file '%s' holds no Keras model; %s" % (path, HELP))
            if GROUP not in f:
                raise UsageError(
                    "model file '%s' has no '%s' preprocessing group (written by an "
                    'older version?); %s' % (path, GROUP, HELP)
                )
            _check_declared_sizes(f, os.path.getsize(path))
            stored = _Stored(f[GROUP])
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
        config = json.loads(text(model_config))
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
