"""The training entry's command line: an absl flag for every field of
``config.RunConfig`` that has a help text, parsed into a checked ``RunConfig``.
Imports no TensorFlow.
"""

import dataclasses
from typing import List, Optional

from absl import flags

import dataset
import networks
from sesemi_base.errors import UsageError
from sesemi_tf import cli
from sesemi_tf.config import FIELDS, from_flags


def define_flags(fv: flags.FlagValues) -> None:
    """Defines a flag on ``fv`` for every field of ``RunConfig`` with a help text,
    plus ``--data_path``, the ModelZoo scripts' name of ``--dataset``."""
    for field in FIELDS:
        meta = field.metadata
        if 'help' not in meta:
            continue
        kind = _kind(field)
        bounds = {}
        if 'lower' in meta:
            bounds['lower_bound'] = meta['lower']
        if 'upper' in meta:
            bounds['upper_bound'] = meta['upper']
        if 'choices' in meta:
            flags.DEFINE_enum(
                field.name, field.default, meta['choices'], meta['help'], flag_values=fv
            )
        elif kind is bool:
            flags.DEFINE_boolean(field.name, field.default, meta['help'], flag_values=fv)
        elif kind is int:
            flags.DEFINE_integer(field.name, field.default, meta['help'], flag_values=fv, **bounds)
        elif kind is float:
            flags.DEFINE_float(field.name, field.default, meta['help'], flag_values=fv, **bounds)
        else:
            flags.DEFINE_string(field.name, field.default, meta['help'], flag_values=fv)
    flags.DEFINE_alias('data_path', 'dataset', flag_values=fv)


def _kind(field: dataclasses.Field) -> type:
    """The value type of a field, ``Optional`` removed."""
    hint = field.type
    args = [a for a in getattr(hint, '__args__', ()) if a is not type(None)]
    return args[0] if args else hint


def parse(argv: List[str], doc: Optional[str] = None):
    """Parses and checks the training entry's flags (``doc``: the text of --help).

    Returns:
        (the ``RunConfig``, the run's ``dataset.DatasetInfo``).

    Raises:
        UsageError: unknown or malformed flags, an unknown dataset or network, a
            bad image folder, or settings that cannot hold together.
    """
    fv, positional = cli.parse_flags(define_flags, argv, doc)
    if positional:
        raise UsageError(
            'unexpected argument %s; all inputs are flags (see --help)' % positional[0]
        )
    values = {name: fv[name].value for name in fv if name != 'data_path'}
    networks.check(values['network'])
    values['dataset'] = values['dataset'] or dataset.get(values['data']).default_dir
    info = dataset.describe(values['data'], values['dataset'], values)
    return from_flags(values, info), info
