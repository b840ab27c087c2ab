"""Layer settings and building blocks shared by the backbones: the reference
networks all use he_normal kernels with L2 5e-4, and BatchNorm with momentum 0.99
and epsilon 1e-3 after every convolution."""

from typing import Optional

from compat import keras

WEIGHT_DECAY = 5e-4
KERNEL_INIT = 'he_normal'
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


def scaled(channels: int, width: float) -> int:
    """A channel count multiplied by the ``--width`` factor (at least 1)."""
    return max(1, int(round(channels * width)))


def conv(x, filters: int, kernel_size: int, name: str, padding: str = 'same',
         use_bias: bool = True):
    """An L2-regularised, he_normal-initialised 2-D convolution."""
    return keras.layers.Conv2D(filters, kernel_size, padding=padding, use_bias=use_bias,
                               kernel_initializer=KERNEL_INIT,
                               kernel_regularizer=keras.regularizers.l2(WEIGHT_DECAY),
                               name=name + '_conv')(x)


def bn_act(x, name: str, leaky_alpha: Optional[float] = None):
    """BatchNorm then ReLU, or LeakyReLU(leaky_alpha) when given."""
    x = keras.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        name=name + '_bn')(x)
    if leaky_alpha is None:
        return keras.layers.Activation('relu', name=name + '_relu')(x)
    return keras.layers.LeakyReLU(alpha=leaky_alpha, name=name + '_lrelu')(x)


def pool_dropout(x, dropout: float, name: str):
    """2×2 max-pooling with stride 2, then dropout when ``dropout`` > 0."""
    x = keras.layers.MaxPooling2D(2, strides=2, padding='valid', name=name)(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name=name + '_dropout')(x)
    return x
