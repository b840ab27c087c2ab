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

import numpy as np
from absl import flags

import dataset
from sesemi_base.errors import UsageError
from sesemi_base.files import write_json
from sesemi_tf import cli, model_io
from sesemi_tf.evaluation import evaluate
from utils import IMAGES_PER_LABELED_STEP


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the tool's flags on ``fv``."""
    flags.DEFINE_string(
        'model', None, 'The model.h5 a training run wrote (required).', flag_values=fv
    )
    flags.DEFINE_string(
        'data',
        None,
        'Dataset name (%s); default: the one the model was trained '
        'on; another name is refused.' % ', '.join(dataset.DATASETS),
        flag_values=fv,
    )
    flags.DEFINE_string(
        'dataset',
        None,
        'Folder holding the dataset files (see dataset/dataset.txt); '
        "default: the dataset's usual folder (image folders: the one in the "
        'split.json next to the model).',
        flag_values=fv,
    )
    flags.DEFINE_alias('data_path', 'dataset', flag_values=fv)
    flags.DEFINE_integer(
        'seed',
        None,
        "Seed of the dense test views; default: the training run's, as stored in the model file.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'precise_bn',
        0,
        'Evaluate with BatchNorm statistics recomputed over '
        'this many labeled-branch batches of the training run (0: the statistics '
        'in the model file); needs the args.json and split.json next to the model.',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_string(
        'output',
        None,
        'JSON file for the result; default: evaluation.json next to the model.',
        flag_values=fv,
    )
    flags.mark_flag_as_required('model', flag_values=fv)


def read_split(model: str) -> dict:
    """The split.json the training run wrote next to ``model`` ({} when there is none)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model)), 'split.json')
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            split = json.load(f)
    except (OSError, ValueError, RecursionError) as err:
        raise UsageError(
            "'%s' cannot be read (%s); restore the file the training run wrote"
            % (path, ' '.join(str(err).split())[:200] or type(err).__name__)
        ) from err
    entries = split.get('test_files', []) if isinstance(split, dict) else None
    if (
        not isinstance(split, dict)
        or not isinstance(split.get('root', ''), str)
        or not isinstance(entries, list)
        or not all(
            isinstance(e, list)
            and len(e) == 2
            and isinstance(e[0], str)
            and isinstance(e[1], int)
            and not isinstance(e[1], bool)
            for e in entries
        )
    ):
        raise UsageError("'%s' is not the split file a training run writes; restore it" % path)
    return split


def read_run(model: str, root: Optional[str], prep: model_io.Preprocessing):
    """What precise BatchNorm statistics need of the training run that wrote ``model``,
    from its args.json and split.json: (the labeled training images as the run
    read them, images per labeled-branch batch, the run's seed).

    Raises:
        UsageError: a file missing or not the training run's, or the dataset changed.
    """
    folder = os.path.dirname(os.path.abspath(model))
    path = os.path.join(folder, 'args.json')
    try:
        with open(path) as f:
            args = json.load(f)
        batch = int(args['batch_size']) * (
            int(args.get('replicas', 1)) if args.get('scale_batch') else 1
        )
        seed = int(args['seed'])
        if batch < 1:
            raise ValueError('batch_size %d' % batch)
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as err:
        raise UsageError(
            '--precise_bn needs the args.json the training run wrote next to the '
            "model; '%s' cannot be read (%s)" % (path, ' '.join(str(err).split()))
        ) from err
    split = read_split(model)
    labeled = split.get('labeled_indices')
    if not isinstance(labeled, list) or not labeled:
        raise UsageError(
            '--precise_bn needs the split.json the training run wrote next to the '
            'model, with its labeled_indices, in %s' % folder
        )
    root = root or split.get('root')  # as for the test images: image folders default to the run's
    info = dataset.describe(prep.data, root, args)
    data = dataset.load_run(info, root, args.get('cache'))
    x_train = data.train[0]
    if not all(isinstance(i, int) and 0 <= i < len(x_train) for i in labeled):
        raise UsageError(
            'the labeled_indices of %s do not fit the %d training images of the '
            'dataset; pass the --dataset the model was trained on'
            % (os.path.join(folder, 'split.json'), len(x_train))
        )
    if x_train.shape[1:] != prep.input_shape:
        raise UsageError(
            'the %s training images are %s, the model takes %s'
            % (prep.data, x_train.shape[1:], prep.input_shape)
        )
    return x_train[np.asarray(labeled)], batch * IMAGES_PER_LABELED_STEP, seed


def run(argv: List[str]) -> int:
    """Runs the tool with ``argv`` (argv[0] is the program name); returns the exit code."""
    fv, positional = cli.parse_flags(define_flags, argv)
    if positional:
        raise UsageError(
            'unexpected argument %s; all inputs are flags (see --help)' % positional[0]
        )
    if fv.data is not None:
        dataset.get(fv.data)
    prep = model_io.read_preprocessing(fv.model, data=fv.data)
    output = fv.output or os.path.join(
        os.path.dirname(os.path.abspath(fv.model)), 'evaluation.json'
    )
    cli.check_output(output)
    x_test, y_test = dataset.load_test(
        prep.data, fv.dataset, read_split(fv.model), prep.input_shape, prep.class_names
    )
    if x_test.shape[1:] != prep.input_shape:
        raise UsageError(
            'the %s test images are %s, the model takes %s'
            % (prep.data, x_test.shape[1:], prep.input_shape)
        )

    run = read_run(fv.model, fv.dataset, prep) if fv.precise_bn else None

    model, prep = model_io.load_model(fv.model, data=prep.data)
    seed = prep.seed if fv.seed is None else fv.seed
    suffix = ''
    if run is not None:
        from sesemi_tf import precise_bn

        images, batch_images, run_seed = run
        convert = prep.apply_tf if images.dtype == np.uint8 else None
        precise_bn.recompute(
            model,
            precise_bn.labeled_batches(
                images if convert else prep.apply(images),
                batch_images,
                run_seed,
                prep.hflip,
                convert,
            ),
            fv.precise_bn,
        )
        suffix = '_precise'
    errors = evaluate(model, prep.apply(x_test), y_test, prep.hflip, seed=seed)
    result = dict(
        {k + suffix: v for k, v in errors.items()},
        n_test=len(y_test),
        model=os.path.abspath(fv.model),
        data=prep.data,
        seed=seed,
    )
    if run is not None:
        result['precise_bn'] = fv.precise_bn
    write_json(output, result)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: one line on stderr and exit code 2 for bad input."""
    return cli.main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
