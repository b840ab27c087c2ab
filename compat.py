"""The one place where TensorFlow 1.15 and TensorFlow 2.x differ.

Every other module imports TensorFlow and Keras from here::

    from compat import tf, keras

On TF 2.x, Keras 3 is not ``tf.keras``-compatible with this code, so the legacy
``tf_keras`` package is selected through ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is first imported. On TF 1.15 ``tf.keras`` is already Keras 2.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402

TF1 = tf.__version__.startswith('1.')

if TF1:
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
else:
    tf.get_logger().setLevel('ERROR')

keras = tf.keras
K = keras.backend


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
    import contextlib
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
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1,
                                          inter_op_parallelism_threads=1)
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
            values = [tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))
                      for tag, value in scalars.items()]
            self._writer.add_summary(tf.compat.v1.Summary(value=values), step)
        else:
            with self._writer.as_default():
                for tag, value in scalars.items():
                    tf.summary.scalar(tag, float(value), step=step)
        self._writer.flush()
