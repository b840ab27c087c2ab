"""Network-in-Network, Lin, Chen & Yan, "Network In Network" (arXiv:1312.4400,
ICLR 2014): the max-pooling CIFAR variant, with batch normalisation after every
convolution.

Only the trunk is built here (no global pooling, no classifier): SESEMI attaches
its own supervised and self-supervised heads on top of it.
"""

from typing import Tuple

from networks.layers import bn_act, conv, pool_dropout, scaled
from sesemi_base.compat import keras

# Three mlpconv blocks: (zero padding, [(filters, kernel size), ...]). The padding
# is explicit so that every convolution is 'valid', as in the original Caffe model.
_BLOCKS = (
    (2, ((192, 5), (160, 1), (96, 1))),
    (2, ((192, 5), (192, 1), (192, 1))),
    (1, ((192, 3), (192, 1), (192, 1))),
)


def create_network(
    input_shape: Tuple[int, int, int], dropout: float = 0.0, width: float = 1.0
) -> keras.Model:
    """Builds the Network-in-Network trunk: 'valid' convolutions with bias, each
    followed by BatchNorm and ReLU.

    Args:
        input_shape: (height, width, channels) of one image.
        dropout: dropout rate after each of the two max-pools; 0 adds no Dropout
            layers.
        width: multiplier applied to every convolution's channel count.

    Returns:
        A functional keras.Model named 'nin_trunk'; a 32×32 input gives an
        8×8×192 output (at width 1).
    """
    inputs = keras.layers.Input(shape=tuple(input_shape), name='nin_input')
    x = inputs
    for b, (pad, convs) in enumerate(_BLOCKS, start=1):
        if b > 1:
            # Pooling sits between mlpconv blocks, not after the last one.
            x = pool_dropout(x, dropout, name='pool%d' % (b - 1))
        x = keras.layers.ZeroPadding2D(pad, name='block%d_pad' % b)(x)
        for i, (filters, kernel_size) in enumerate(convs, start=1):
            name = 'block%d_%d' % (b, i)
            x = conv(x, scaled(filters, width), kernel_size, name, padding='valid')
            x = bn_act(x, name)
    return keras.Model(inputs, x, name='nin_trunk')
