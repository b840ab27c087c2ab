"""The one place where TensorFlow 1.15 and TensorFlow 2.x differ.

Every other module imports TensorFlow and Keras from here::

    from sesemi_base.compat import tf, keras

On TF 2.x, Keras 3 is not ``tf.keras``-compatible with this code, so the legacy
``tf_keras`` package is selected through ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is first imported. On TF 1.15 ``tf.keras`` is already Keras 2.

Importing it also tunes glibc's allocator for TensorFlow on CPU (see
``keep_freed_memory``), before TensorFlow allocates anything, and keeps
TensorFlow's start-up chatter off the console: the lines its C++ runtime writes
before its logging is initialised (the oneDNN notice, "Could not find cuda
drivers", the ``cuInit`` error of a host without a GPU) ignore
``TF_CPP_MIN_LOG_LEVEL``, so stderr is set aside while TensorFlow loads and
probes for GPUs, and shown again only if that fails. TensorFlow's Python
warnings (TF 1.15's deprecation notices among them) are limited to errors.
With ``SESEMI_VERBOSE=1`` in the environment (what every tool's ``--verbose``
sets before TensorFlow loads) all of it is printed as TensorFlow prints it.
"""

import contextlib
import ctypes
import os

from sesemi_base.console import stderr_set_aside, verbose


def keep_freed_memory(pad_bytes: int = 64 << 20) -> bool:
    """Makes glibc's malloc keep up to ``pad_bytes`` of freed heap for reuse.

    TensorFlow's CPU kernels allocate and free their multi-megabyte outputs on
    every step. With glibc's defaults each of those buffers is returned to the
    kernel and faulted in afresh, zeroed, by the next step: on a 2-core machine
    that kernel time was 40 % of the input pipeline's CPU time and halved its
    throughput (bench/pipeline.py). A larger top pad keeps the memory mapped.
    Returns False where the C library is not glibc (nothing is changed there).
    """
    m_top_pad = -2  # from glibc's malloc.h
    try:
        return bool(ctypes.CDLL('libc.so.6').mallopt(m_top_pad, pad_bytes))
    except (OSError, AttributeError):
        return False


VERBOSE = verbose()

keep_freed_memory()
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
if not VERBOSE:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

with stderr_set_aside(hide=not VERBOSE):
    import tensorflow as tf  # noqa: E402

    # The first look for GPUs initialises CUDA, which logs an error on hosts without one;
    # later looks (device.py's) reuse the result and print nothing.
    tf.config.experimental.list_physical_devices('GPU')

TF1 = tf.__version__.startswith('1.')

if not VERBOSE and TF1:
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)  # hides deprecation notices
elif not VERBOSE:
    tf.get_logger().setLevel('ERROR')

keras = tf.keras
K = keras.backend

# A layer's ``training`` flag is a Python bool on TF 2.x and, in TF 1.15's Keras graphs, the
# learning-phase tensor: these pick a branch in Python when they can and build a cond otherwise.
if TF1:
    from tensorflow.python.keras.utils.tf_utils import constant_value, smart_cond  # noqa: E402,F401
else:
    from tf_keras.src.utils.control_flow_util import constant_value, smart_cond  # noqa: E402,F401


def replica_local_variable(value, name: str, average: bool = True):
    """A non-trainable variable of which every replica of a data-parallel strategy
    keeps its own copy (read across replicas: their mean, or with ``average``
    False the first replica's), for state that each replica updates in its
    training step. TF 1.15 has no such strategies here: a Keras backend
    variable, which its Keras session initialises."""
    if TF1:
        return K.variable(value, dtype=value.dtype.name, name=name)
    aggregation = (
        tf.VariableAggregation.MEAN if average else tf.VariableAggregation.ONLY_FIRST_REPLICA
    )
    return tf.Variable(
        value,
        name=name,
        trainable=False,
        aggregation=aggregation,
        synchronization=tf.VariableSynchronization.ON_READ,
    )


# Marks a function that TensorFlow traces as it is, without autograph's rewrite: the
# project's traced code has no Python control flow on tensors, so the rewrite only makes
# tracing slower and runs a converted copy of the code (which coverage cannot follow).
do_not_convert = tf.autograph.experimental.do_not_convert


def map_batches(dataset, fn, count: int):
    """Yields ``fn(element)`` as numpy for each of the first ``count`` elements of
    ``dataset``; ``fn`` builds TensorFlow ops (once, in a graph or a tf.function)
    and may use the models of Keras' session."""
    if TF1:
        element = tf.compat.v1.data.make_one_shot_iterator(dataset.take(count)).get_next()
        outputs = fn(element)
        session = K.get_session()
        for _ in range(count):
            yield session.run(outputs)
        return
    step = tf.function(fn)
    for element in dataset.take(count):
        yield tf.nest.map_structure(lambda t: t.numpy(), step(element))


def set_seed(seed: int) -> None:
    """Seeds TensorFlow's global random generator (ops created later derive from it)."""
    if TF1:
        tf.compat.v1.set_random_seed(seed)
    else:
        keras.utils.set_random_seed(seed)


def to_float(value) -> float:
    """Evaluates a scalar tensor or variable to a Python float (graph or eager)."""
    return float(K.get_value(value) if hasattr(value, 'assign') else K.eval(value))


def session_scope():
    """Context in which TF 1.15 graph-mode calls find Keras' session (no-op on TF 2)."""
    return K.get_session().as_default() if TF1 else contextlib.nullcontext()


def create_optimizer_slots(model) -> None:
    """Creates the optimizer's variables now, so that a checkpoint can fill them
    before the first training step."""
    if TF1:
        model._make_train_function()  # pylint: disable=protected-access
    else:
        model.optimizer.build(model.trainable_variables)


def restore_checkpoint(checkpoint, path: str) -> None:
    """Restores a ``tf.train.Checkpoint`` immediately, raising if it does not load."""
    status = checkpoint.restore(path)
    status.assert_existing_objects_matched()
    if TF1:
        status.run_restore_ops(K.get_session())


def make_deterministic() -> None:
    """One thread per op pool and deterministic kernels, for bit-exact repeat runs."""
    if TF1:
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=1
        )
        tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))
    else:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()


class ScalarWriter:
    """Writes scalar summaries (TensorBoard event files) to ``logdir``."""

    def __init__(self, logdir: str):
        if TF1:
            self._writer = tf.compat.v1.summary.FileWriter(logdir)
        else:
            self._writer = tf.summary.create_file_writer(logdir)

    def write(self, step: int, scalars: dict) -> None:
        """Records every (tag, value) of ``scalars`` at ``step``."""
        if TF1:
            values = [
                tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))
                for tag, value in scalars.items()
            ]
            self._writer.add_summary(tf.compat.v1.Summary(value=values), step)
        else:
            with self._writer.as_default():
                for tag, value in scalars.items():
                    tf.summary.scalar(tag, float(value), step=step)
        self._writer.flush()


def export_serving(model, transform, input_shape, folder: str) -> dict:
    """Writes ``model(transform(images))`` for serving into the new folder ``folder``.

    TF 2.x: a SavedModel whose ``serving_default`` signature maps ``images`` to
    ``probabilities``. TF 1.15: ``model.pb``, a frozen GraphDef (variables folded
    into constants, inference mode), the form Ascend's ATC converter reads.

    Args:
        model: the Keras inference model.
        transform: builds the preprocessing ops on the images tensor.
        input_shape: H×W×C of one image.
        folder: created here; must not exist.

    Returns:
        What a user of the export needs: format, file, input and output names.
    """
    os.makedirs(folder)
    shape = [None] + [int(d) for d in input_shape]
    if TF1:
        sess = K.get_session()
        with sess.graph.as_default():
            images = tf.compat.v1.placeholder(tf.float32, shape, name='images')
            probs = tf.identity(model(transform(images), training=False), name='probabilities')
        graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, sess.graph.as_graph_def(), [probs.op.name]
        )
        with open(os.path.join(folder, 'model.pb'), 'wb') as f:
            f.write(graph_def.SerializeToString())
        return {
            'format': 'frozen_graph',
            'file': 'model.pb',
            'inputs': {'images': images.name},
            'outputs': {'probabilities': probs.name},
        }

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name='images')])
    def serve(images):
        return {'probabilities': model(transform(images), training=False)}

    module = tf.Module()
    # Tracking the variables alone (not the Keras model) keeps the export small and quick.
    module.weights, module.serve = list(model.variables), serve
    tf.saved_model.save(module, folder, signatures={'serving_default': serve})
    return {
        'format': 'saved_model',
        'file': '.',
        'signature': 'serving_default',
        'inputs': {'images': 'images'},
        'outputs': {'probabilities': 'probabilities'},
    }
