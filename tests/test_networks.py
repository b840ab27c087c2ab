"""The backbone trunks in networks/: output shapes, exact parameter counts
against the reference architectures, the width multiplier, dropout placement
and the name registry."""

import pytest

import networks
from sesemi_base.compat import keras
from sesemi_base.errors import UsageError

INPUT_SHAPE = (32, 32, 3)

# Trunk outputs and count_params() (BN moving statistics included) for a 32×32×3
# input at width 1; the counts pin the architectures down layer by layer.
EXPECTED = {
    'convnet': ((6, 6, 128), 3126656),
    'nin': ((8, 8, 192), 1008512),
    'wrn': ((8, 8, 128), 1469936),
}
DROPOUT_LAYERS = {'convnet': 2, 'nin': 2, 'wrn': 9}
HAS_CONV_BIAS = {'convnet': True, 'nin': True, 'wrn': False}

NAMES = sorted(networks.NETWORKS)


@pytest.fixture(autouse=True)
def fresh_session():
    # Layer names are fixed, and TF 1.15 keeps every model in one default graph.
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def _count(model, layer_type):
    return sum(isinstance(layer, layer_type) for layer in model.layers)


def test_registry_covers_expected_networks():
    assert sorted(EXPECTED) == NAMES


@pytest.mark.parametrize('name', NAMES)
def test_shape_params_and_structure(name):
    model = networks.get(name)(INPUT_SHAPE)
    shape, params = EXPECTED[name]
    assert isinstance(model, keras.Model)
    assert model.name == '%s_trunk' % name
    assert tuple(model.output_shape[1:]) == shape
    assert model.count_params() == params
    assert _count(model, keras.layers.Dropout) == 0

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(c.use_bias == HAS_CONV_BIAS[name] for c in convs)
    # Every conv kernel carries the L2 weight decay, and nothing else does.
    assert len(model.losses) == len(convs)
    for bn in (
        layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ):
        assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)


@pytest.mark.parametrize('name', NAMES)
def test_width_multiplier_shrinks_model(name):
    model = networks.get(name)(INPUT_SHAPE, width=0.25)
    shape, params = EXPECTED[name]
    assert model.count_params() < params
    assert tuple(model.output_shape[1:]) == shape[:2] + (int(round(shape[2] * 0.25)),)


@pytest.mark.parametrize('name', NAMES)
def test_single_channel_input(name):
    model = networks.get(name)((32, 32, 1))
    assert tuple(model.output_shape[1:]) == EXPECTED[name][0]


@pytest.mark.parametrize('name', NAMES)
def test_dropout_adds_dropout_layers(name):
    model = networks.get(name)(INPUT_SHAPE, dropout=0.3)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == DROPOUT_LAYERS[name]
    assert all(d.rate == 0.3 for d in dropouts)
    # Dropout has no weights: the architecture is otherwise unchanged.
    assert model.count_params() == EXPECTED[name][1]


def test_get_returns_the_module_builder():
    import importlib

    for name in NAMES:
        assert networks.get(name) is importlib.import_module('networks.' + name).create_network


def test_unknown_name_lists_known_networks():
    with pytest.raises(UsageError) as err:
        networks.get('foo')
    message = str(err.value)
    assert "'foo'" in message
    assert 'convnet, nin, wrn' in message
