"""The result folder before training: a run resumed or started afresh only where
it belongs, and a folder that can be written. Imports no TensorFlow, so these
checks cost one line on stderr before it loads.

What a run leaves there: args.json (the config), split.json (the labeled
indices; for folder data the files), skipped_images.txt, metrics.jsonl,
train.log, tensorboard/, checkpoints/, and at the end model.h5 and result.json.
"""

import json
import os
import re
import tempfile
from typing import Any, Dict, Sequence

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
    except RecursionError as err:
        raise UsageError(
            "'%s' cannot be read (nested too deeply); restore the file the run wrote, or pass "
            'another --result' % path
        ) from err
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
        check_resumable(
            saved, cfg, keys or config.defined_by_flags(), os.path.join(cfg.result, ARGS_FILE)
        )


def check_resumable(
    saved: Dict[str, Any], cfg: 'config.RunConfig', keys: Sequence[str], source: str = 'args.json'
) -> None:
    """Refuses to resume a run whose defining settings ``keys`` changed.

    Args:
        saved: the saved run's config (its args.json).
        cfg: this run's config.
        keys: the settings that must be equal.
        source: the file ``saved`` was read from, for the message.

    Raises:
        UsageError: listing every setting whose saved value differs.
    """
    before = config.from_json(saved)

    def value(saved_value) -> str:  # a value of a damaged file may hold line breaks
        text = ' '.join(str(saved_value).split())
        return text if len(text) <= 60 else text[:57] + '...'

    def name(key: str) -> str:  # resolved ones are not flags
        if key in config.RESOLVED_LATER:
            return '%s %s' % (key, getattr(cfg, key))
        return '--%s=%s' % (key, getattr(cfg, key))

    diffs = [
        '%s (saved: %s)' % (name(k), value(getattr(before, k)))
        for k in keys
        if getattr(before, k) != getattr(cfg, k)
    ]
    if diffs:
        raise UsageError(
            'cannot resume: the saved run (%s) differs in %s; use the saved values or a new '
            '--result' % (source, ', '.join(diffs))
        )


def check_no_earlier_run(cfg) -> None:
    """Refuses to start afresh where an earlier run left checkpoints or metrics,
    which a new run would overwrite or mix with its own."""
    metrics = os.path.join(cfg.result, 'metrics.jsonl')
    earlier = read_metrics(metrics)
    has_checkpoints = os.path.lexists(os.path.join(cfg.ckpt_path, CHECKPOINT_STATE))
    # A metrics file with no whole row (a cut line) is still an earlier run's.
    if earlier or has_checkpoints or (os.path.isfile(metrics) and os.path.getsize(metrics)):
        raise UsageError(
            'result folder %s holds an earlier run (%s); pass --resume to continue it, or '
            'another --result (or remove the folder) to start over'
            % (
                cfg.result,
                'step %d' % earlier[-1]['step']
                if earlier
                else 'checkpoints in %s' % cfg.ckpt_path
                if has_checkpoints
                else metrics,
            )
        )


CHECKPOINT_STATE = 'checkpoint'  # CheckpointManager's record of the checkpoints
# The lines of the state file as TensorFlow writes it (text-format CheckpointState): a
# string field with its escapes, or a number field.
_STATE_LINE = re.compile(
    r'\s*(?:(model_checkpoint_path|all_model_checkpoint_paths)\s*:\s*'
    r'"((?:[^"\\\n]|\\[ntr"\'\\]|\\[0-7]{1,3}|\\x[0-9a-fA-F]{1,2})*)"'
    r'|(?:all_model_checkpoint_timestamps|last_preserved_timestamp)\s*:\s*'
    r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*'
)


def check_checkpoint_state(folder: str) -> None:
    """Checks the checkpoint folder's state file, which TensorFlow reads on --resume,
    without TensorFlow: a damaged one would otherwise raise inside it, or read as no
    checkpoint at all, and the resumed run would start afresh over the earlier one.

    Raises:
        UsageError: the state file exists but is not one TensorFlow writes.
    """
    path = os.path.join(folder, CHECKPOINT_STATE)
    if not os.path.lexists(path):
        return
    try:
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8')
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, 'strerror', None) or ' '.join(str(err).split())
    else:
        numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        matches = [(n, _STATE_LINE.fullmatch(line)) for n, line in numbered]
        bad = [n for n, match in matches if match is None]
        if bad:
            why = 'line %d is not a checkpoint state line' % bad[0]
        elif not any(m.group(1) == 'model_checkpoint_path' and m.group(2) for _, m in matches):
            why = 'it names no newest checkpoint'
        else:
            return
    raise UsageError(
        "checkpoint state file '%s' is damaged (%s); restore it, or pass another --result "
        'to start afresh' % (path, why)
    )


def check_folder(cfg) -> None:
    """The result-folder checks of a run before its data is read: --resume of the
    same run, or a fresh start where no earlier run is (a --dry_run writes nothing)."""
    if cfg.dry_run:
        return
    if cfg.resume:
        check_resumed(cfg)
        read_metrics(os.path.join(cfg.result, 'metrics.jsonl'))  # damaged: one line now
        check_checkpoint_state(cfg.ckpt_path)
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
