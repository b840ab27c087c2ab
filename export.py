"""Exports a saved SESEMI model for serving, preprocessing included.

Example:
    python export.py --model=results/c10_1000/model.h5 --output=results/c10_1000/export

The exported graph takes raw images: float32 N×H×W×C in [0, 1] (``images``),
applies the model file's GCN and ZCA as graph ops, and returns the softmax
(``probabilities``). On TF 2.x the output folder is a SavedModel (signature
``serving_default``); on TF 1.15 it holds ``model.pb``, a frozen GraphDef for
Ascend's ATC converter. Either way ``serving.json`` in the folder names the
input and output tensors and records the preprocessing and class names.

The export is built in a temporary folder and renamed into place when complete;
an earlier export at --output is replaced, any other existing path is refused.
"""

import json
import os
import shutil
import sys
from typing import List, Optional

from absl import flags

from sesemi_base.errors import UsageError
from sesemi_tf import cli, model_io

DESCRIPTION = 'serving.json'


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the tool's flags on ``fv``."""
    flags.DEFINE_string(
        'model', None, 'The model.h5 a training run wrote (required).', flag_values=fv
    )
    flags.DEFINE_string(
        'output',
        None,
        'Folder to create for the export; default: export/ next '
        'to the model. An earlier export there is replaced.',
        flag_values=fv,
    )
    flags.mark_flag_as_required('model', flag_values=fv)


def check_output_folder(path: str) -> None:
    """Refuses an --output that exists but is not an earlier export, or cannot be created."""
    if os.path.lexists(path) and not os.path.isfile(os.path.join(path, DESCRIPTION)):
        raise UsageError(
            "--output '%s' exists and is not an earlier export (no %s); remove it "
            'or pass another folder' % (path, DESCRIPTION)
        )
    cli.check_folder(os.path.dirname(path))  # the export is built next to it, then renamed


def replace_folder(tmp: str, path: str) -> None:
    """Moves the complete folder ``tmp`` to ``path``, replacing an earlier one there."""
    old = None
    if os.path.lexists(path):
        old = '%s.old%d' % (path, os.getpid())
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def run(argv: List[str]) -> int:
    """Runs the tool with ``argv`` (argv[0] is the program name); returns the exit code."""
    fv, positional = cli.parse_flags(define_flags, argv)
    if positional:
        raise UsageError(
            'unexpected argument %s; all inputs are flags (see --help)' % positional[0]
        )
    prep = model_io.read_preprocessing(fv.model)
    output = os.path.abspath(
        fv.output or os.path.join(os.path.dirname(os.path.abspath(fv.model)), 'export')
    )
    check_output_folder(output)

    from sesemi_base import compat

    model, prep = model_io.load_model(fv.model)
    tmp = '%s.tmp%d' % (output, os.getpid())
    try:
        described = compat.export_serving(model, prep.apply_tf, prep.input_shape, tmp)
        described.update(
            {
                'input': 'float32 N×%s images in [0, 1]; GCN%s are part of the graph'
                % (
                    '×'.join(str(d) for d in prep.input_shape),
                    ' and ZCA' if prep.zca is not None else '',
                ),
                'output': 'N×%d softmax probabilities, classes in label order' % prep.n_classes,
                'preprocessing': prep.describe(),
                'model': os.path.abspath(fv.model),
                'tf_version': compat.tf.__version__,
            }
        )
        with open(os.path.join(tmp, DESCRIPTION), 'w') as f:
            json.dump(described, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write('\n')
        replace_folder(tmp, output)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    print('Exported %s (%s) to %s' % (fv.model, described['format'], output))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: one line on stderr and exit code 2 for bad input."""
    return cli.main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
