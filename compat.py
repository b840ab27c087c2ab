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
        tf.random.set_seed(seed)


def to_float(value) -> float:
    """Evaluates a scalar tensor or variable to a Python float (graph or eager)."""
    return float(K.get_value(value) if hasattr(value, 'assign') else K.eval(value))
