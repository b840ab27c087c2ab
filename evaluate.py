"""Evaluates a saved SESEMI model on its dataset's test split.

Example:
    python evaluate.py --model=results/c10_1000/model.h5 --dataset=datasets/cifar-10-batches-py
    python evaluate.py --model=results/photos/model.h5 --dataset=photos

For a model trained on an image folder (--data=folder) the test images are those
of ROOT/test/, or, without it, the held-out files listed in the split.json next to
the model, decoded as in training.

The test images are preprocessed with the parameters stored in the model file
(GCN, and the ZCA fitted on the training run's training set: nothing is refitted),
and the dense views are drawn with the training run's seed unless --seed is given,
so the numbers equal the run's final evaluation in result.json. Prints and writes
{error_single, error_dense, n_test, model, data} (default: evaluation.json next to
the model). Bad input ends in one line on stderr and exit code 2, before
TensorFlow is imported.
"""

import json
import os
import sys
from typing import List, Optional

from absl import flags

import cli
import dataset
import model_io
import utils
from checkpoints import write_json
from utils import UsageError


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the tool's flags on ``fv``."""
    flags.DEFINE_string('model', None, 'The model.h5 a training run wrote (required).',
                        flag_values=fv)
    flags.DEFINE_string('data', None, 'Dataset name (%s); default: the one the model was trained '
                        'on; another name is refused.' % ', '.join(dataset.DATASETS), flag_values=fv)
    flags.DEFINE_string('dataset', None, 'Folder holding the dataset files (see dataset/dataset.txt); '
                        'default: the dataset\'s usual folder (image folders: the one in the '
                        'split.json next to the model).', flag_values=fv)
    flags.DEFINE_alias('data_path', 'dataset', flag_values=fv)
    flags.DEFINE_integer('seed', None, 'Seed of the dense test views; default: the training run\'s, '
                         'as stored in the model file.', flag_values=fv)
    flags.DEFINE_string('output', None, 'JSON file for the result; default: evaluation.json next '
                        'to the model.', flag_values=fv)
    flags.mark_flag_as_required('model', flag_values=fv)


def read_split(model: str) -> dict:
    """The split.json the training run wrote next to ``model`` ({} when there is none)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model)), 'split.json')
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            split = json.load(f)
    except (OSError, ValueError) as err:
        raise UsageError("'%s' cannot be read (%s); restore the file the training run wrote"
                         % (path, ' '.join(str(err).split())))
    if not isinstance(split, dict):
        raise UsageError("'%s' is not the split file a training run writes; restore it" % path)
    return split


def run(argv: List[str]) -> int:
    """Runs the tool with ``argv`` (argv[0] is the program name); returns the exit code."""
    fv, positional = cli.parse_flags(define_flags, argv)
    if positional:
        raise UsageError('unexpected argument %s; all inputs are flags (see --help)'
                         % positional[0])
    if fv.data is not None:
        dataset.get(fv.data)
    prep = model_io.read_preprocessing(fv.model, data=fv.data)
    output = fv.output or os.path.join(os.path.dirname(os.path.abspath(fv.model)), 'evaluation.json')
    cli.check_output(output)
    x_test, y_test = dataset.load_test(prep.data, fv.dataset, read_split(fv.model),
                                       prep.input_shape, prep.class_names)
    if x_test.shape[1:] != prep.input_shape:
        raise UsageError('the %s test images are %s, the model takes %s'
                         % (prep.data, x_test.shape[1:], prep.input_shape))

    model, prep = model_io.load_model(fv.model, data=prep.data)
    seed = prep.seed if fv.seed is None else fv.seed
    errors = utils.evaluate(model, prep.apply(x_test), y_test, prep.hflip, seed=seed)
    result = dict(errors, n_test=len(y_test), model=os.path.abspath(fv.model), data=prep.data,
                  seed=seed)
    write_json(output, result)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: one line on stderr and exit code 2 for bad input."""
    return cli.main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
