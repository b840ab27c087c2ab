"""The result folder before training: a run resumed or started afresh only where
it belongs, and a folder that can be written. Imports no TensorFlow, so these
checks cost one line on stderr before it loads.

What a run leaves there: args.json (the config), split.json (the labeled
indices; for folder data the files), skipped_images.txt, metrics.jsonl,
train.log, tensorboard/, checkpoints/, and at the end model.h5 and result.json.
"""

import json
import os
import tempfile

from sesemi_base.errors import UsageError
from sesemi_base.files import read_metrics
from sesemi_tf import config

SKIPPED_FILE = 'skipped_images.txt'  # image files that could not be decoded, one per line
ARGS_FILE = 'args.json'


def read_args(result: str):
    """The config saved in ``result``/args.json, or None when there is none.

    Raises:
        UsageError: the file cannot be read or is not a config.
    """
    path = os.path.join(result, ARGS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise TypeError('not a JSON object')
        return saved
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(
            "'%s' cannot be read (%s); restore the file the run wrote, or pass another --result"
            % (path, ' '.join(str(err).split()))
        ) from err


def check_resumed(cfg, keys=None) -> None:
    """Refuses --resume when the result folder holds a different run: compares the
    run-defining ``keys`` (default those the flags fix before TensorFlow loads).

    Raises:
        UsageError: listing the settings that differ.
    """
    saved = read_args(cfg.result)
    if saved is not None:
        config.check_resumable(saved, cfg, keys or config.defined_by_flags())


def check_no_earlier_run(cfg) -> None:
    """Refuses to start afresh where an earlier run left checkpoints or metrics,
    which a new run would overwrite or mix with its own."""
    earlier = read_metrics(os.path.join(cfg.result, 'metrics.jsonl'))
    has_checkpoints = os.path.exists(os.path.join(cfg.ckpt_path, 'checkpoint'))
    if earlier or has_checkpoints:
        raise UsageError(
            'result folder %s holds an earlier run (%s); pass --resume to continue it, or '
            'another --result (or remove the folder) to start over'
            % (
                cfg.result,
                'step %d' % earlier[-1]['step'] if earlier else 'checkpoints in %s' % cfg.ckpt_path,
            )
        )


def check_folder(cfg) -> None:
    """The result-folder checks of a run before its data is read: --resume of the
    same run, or a fresh start where no earlier run is (a --dry_run writes nothing)."""
    if cfg.dry_run:
        return
    if cfg.resume:
        check_resumed(cfg)
    else:
        check_no_earlier_run(cfg)


def prepare_result_folder(path: str) -> None:
    """Creates the result folder and checks that it is writable."""
    try:
        os.makedirs(path, exist_ok=True)
        # A name of its own: the workers of a multi-worker job probe the same folder at once.
        with tempfile.NamedTemporaryFile('w', dir=path, prefix='.write_test') as f:
            f.write('ok')
    except OSError as err:
        raise UsageError(
            'cannot write to result folder %s (%s); pass a writable --result'
            % (path, err.strerror or err)
        ) from err
