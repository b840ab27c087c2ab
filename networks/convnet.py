"""ConvNet-13, the 13-layer convolutional network of Laine & Aila,
"Temporal Ensembling for Semi-Supervised Learning" (ICLR 2017), as also used by
Tarvainen & Valpola, "Mean teachers are better role models" (NeurIPS 2017).

Only the trunk is built here (no global pooling, no classifier): SESEMI attaches
its own supervised and self-supervised heads on top of it.
"""

from typing import Tuple

from networks.layers import bn_act, conv, pool_dropout, scaled
from sesemi_base.compat import keras

LEAKY_ALPHA = 0.1

# (filters, kernel size, padding) per convolution; None marks a pooling stage
# (max-pool, then dropout when requested).
_LAYOUT = (
    (128, 3, 'same'),
    (128, 3, 'same'),
    (128, 3, 'same'),
    None,
    (256, 3, 'same'),
    (256, 3, 'same'),
    (256, 3, 'same'),
    None,
    (512, 3, 'valid'),
    (256, 1, 'valid'),
    (128, 1, 'valid'),
)


def create_network(
    input_shape: Tuple[int, int, int], dropout: float = 0.0, width: float = 1.0
) -> keras.Model:
    """Builds the ConvNet-13 trunk: every convolution has a bias and is followed by
    BatchNorm and LeakyReLU(0.1).

    Args:
        input_shape: (height, width, channels) of one image.
        dropout: dropout rate after each max-pool; 0 adds no Dropout layers.
        width: multiplier applied to every convolution's channel count.

    Returns:
        A functional keras.Model named 'convnet_trunk'; a 32×32 input gives a
        6×6×128 output (at width 1).
    """
    inputs = keras.layers.Input(shape=tuple(input_shape), name='convnet_input')
    x = inputs
    conv_index = pool_index = 0
    for spec in _LAYOUT:
        if spec is None:
            pool_index += 1
            x = pool_dropout(x, dropout, name='pool%d' % pool_index)
            continue
        filters, kernel_size, padding = spec
        conv_index += 1
        name = 'block%d' % conv_index
        x = conv(x, scaled(filters, width), kernel_size, name, padding=padding)
        x = bn_act(x, name, leaky_alpha=LEAKY_ALPHA)
    return keras.Model(inputs, x, name='convnet_trunk')
