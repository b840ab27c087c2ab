"""Backbone trunks for SESEMI (Tran 2019, arXiv:1906.10343).

Every module here exposes ``create_network(input_shape, dropout=0.0,
width=1.0) -> keras.Model`` returning a trunk without pooling or head; this
registry maps the command-line names to those modules. Modules are imported on
first use, so that flags can be checked without loading TensorFlow.
"""

import importlib
from typing import Callable

from sesemi_base.errors import UsageError

NETWORKS = ('convnet', 'nin', 'wrn')


def check(name: str) -> None:
    """Raises UsageError, listing the known networks, if ``name`` is not one of them."""
    if name not in NETWORKS:
        raise UsageError('unknown network %r; choose one of: %s' % (name, ', '.join(NETWORKS)))


def get(name: str) -> Callable:
    """Looks up a backbone builder by name.

    Args:
        name: one of ``NETWORKS``.

    Returns:
        The module's ``create_network`` function.

    Raises:
        UsageError: if ``name`` is not a known network.
    """
    check(name)
    return importlib.import_module('networks.' + name).create_network
