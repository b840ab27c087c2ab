"""Training a built run to its end: resume from the newest checkpoint, fit in the
phases the plan gives, stop cleanly on a non-finite loss, a signal or a lost
peer, and write model.h5 and result.json.

Exit codes: 0 done; 3 a non-finite loss; 4 another worker of a multi-worker job
failed (``parallel.EXIT_PEER_FAILED``); 128 + the signal's number when stopped by
SIGTERM or Ctrl-C after saving a checkpoint.
"""

import os
import sys
import time
from typing import Callable, Sequence

from sesemi_base.compat import to_float
from sesemi_base.files import read_metrics, write_atomic, write_json, write_metrics
from sesemi_tf import config, debug
from sesemi_tf.checkpoints import Checkpoints, Interrupt, fault_point
from sesemi_tf.model_io import save_model
from sesemi_tf.parallel import EXIT_PEER_FAILED
from sesemi_tf.plan import fit_phases
from sesemi_tf.progress import StepLogger
from sesemi_tf.results import ARGS_FILE, SKIPPED_FILE

EXIT_NON_FINITE = 3


def train_and_evaluate(
    training, split_files: dict, skipped: Sequence[str], callbacks: Sequence[Callable] = ()
) -> int:
    """Trains (resuming if asked), then writes model.h5 and result.json.

    Args:
        training: the built ``sesemi_tf.training.Training``.
        split_files: split.json's entries beyond the labeled indices (folder data).
        skipped: the image files that could not be decoded, with the reason.
        callbacks: functions of ``training`` that make further Keras callbacks.

    Returns:
        The exit code (see the module docstring).
    """
    cfg, parallel, plan = training.cfg, training.parallel, training.plan
    ckpts = Checkpoints(
        parallel.checkpoint_folder(cfg.ckpt_path),
        training.model,
        cfg.keep_checkpoints,
        source=cfg.ckpt_path,
        temporary=not parallel.chief,
    )
    step, rows = resume(training, ckpts)
    if parallel.chief:
        write_start_files(training, rows, split_files, skipped)

    training.preprocess()
    start = time.time()
    with Interrupt() as interrupt:
        logger = StepLogger(training, rows, ckpts, interrupt)
        others = (
            debug.callbacks(cfg) + parallel.callbacks() + [make(training) for make in callbacks]
        )
        try:
            for initial_epoch, epochs, steps_per_epoch, first_step in fit_phases(plan, step):
                training.model.fit(
                    training.dataset(first_step),
                    initial_epoch=initial_epoch,
                    epochs=epochs,
                    steps_per_epoch=steps_per_epoch,
                    verbose=0,
                    callbacks=[logger] + others,
                )
                if logger.nan:
                    break
                if logger.vote():  # between fit calls: a signal after the last step's vote
                    logger.save(logger.step())
                    break
        except parallel.peer_errors() as err:
            print(
                'error: another worker of the job failed or stopped at step %d (%s); the '
                'newest checkpoint is in %s; start every worker again with --resume'
                % (logger.step(), type(err).__name__, cfg.ckpt_path),
                file=sys.stderr,
            )
            return EXIT_PEER_FAILED
    if logger.nan:
        nan_step, losses = logger.nan
        print(
            'error: non-finite loss at step %d (%s); stopped without saving, the newest good '
            'checkpoint is in %s; lower --base_lr'
            % (nan_step, ', '.join('%s %.4g' % kv for kv in sorted(losses.items())), cfg.ckpt_path),
            file=sys.stderr,
        )
        return EXIT_NON_FINITE
    if logger.stop_signal is not None and logger.step() < plan.total_steps:
        print(
            'Interrupted at step %d; checkpoint saved. Continue with the same flags plus '
            '--resume' % logger.step(),
            file=sys.stderr,
        )
        return 128 + logger.stop_signal
    return finish(training, rows[-1], start)


def resume(training, ckpts: Checkpoints):
    """(step, metrics rows) to go on from: those of the newest good checkpoint with
    --resume, else (0, [])."""
    cfg = training.cfg
    if not cfg.resume:
        return 0, []
    with training.parallel.scope():  # the optimizer's slots are made as the model's
        restored = ckpts.restore_newest(warn=lambda text: print(text, file=sys.stderr))
    if not restored:
        print('No usable checkpoint in %s; starting from step 0' % cfg.ckpt_path, flush=True)
        return 0, []
    step = int(to_float(training.model.optimizer.iterations))
    rows = [r for r in read_metrics(os.path.join(cfg.result, 'metrics.jsonl')) if r['step'] <= step]
    print('Resuming from %s at step %d' % (restored, step), flush=True)
    return step, rows


def write_start_files(training, rows, split_files: dict, skipped: Sequence[str]) -> None:
    """args.json, split.json, the skipped files' list, and metrics.jsonl as far as
    the run has come."""
    result = training.cfg.result
    write_json(os.path.join(result, ARGS_FILE), config.to_json(training.cfg))
    write_json(
        os.path.join(result, 'split.json'),
        dict(split_files, labeled_indices=training.labeled.tolist()),
    )
    if skipped:
        write_atomic(os.path.join(result, SKIPPED_FILE), ''.join(line + '\n' for line in skipped))
    write_metrics(os.path.join(result, 'metrics.jsonl'), rows)


def finish(training, final: dict, start: float) -> int:
    """Writes model.h5 and result.json (the chief; the other workers print the errors)."""
    cfg = training.cfg
    fault_point('model', final['step'])
    if not training.parallel.chief:
        print(
            'Final test error: dense %.4f, single view %.4f (%d steps); the chief writes the '
            'results' % (final['error_dense'], final['error_single'], final['step'])
        )
        return 0
    # The evaluated model holds the weights of the final evaluation, which every run ends with.
    saved, statistics = training.evaluated, {'model_statistics': 'moving'}
    if cfg.precise_bn:
        began = time.time()
        saved = training.precise(cfg.precise_bn)
        precise = training.evaluate(saved)
        statistics = {
            'model_statistics': 'precise',
            'precise_bn': cfg.precise_bn,
            'error_dense_moving': final['error_dense'],
            'error_single_moving': final['error_single'],
            'error_dense_precise': precise['error_dense'],
            'error_single_precise': precise['error_single'],
        }
        print(
            'Precise BatchNorm statistics (%d batches, %.0f s): test error dense %.4f, single '
            'view %.4f'
            % (cfg.precise_bn, time.time() - began, precise['error_dense'], precise['error_single'])
        )
    save_model(os.path.join(cfg.result, 'model.h5'), saved, training.preprocessing)
    summary = {
        key: getattr(cfg, key)
        for key in (
            'tf_version',
            'labels',
            'mode',
            'network',
            'data',
            'precision',
            'xla',
            'steps_per_execution',
            'distribute',
            'replicas',
        )
    }
    write_json(
        os.path.join(cfg.result, 'result.json'),
        dict(
            statistics,
            **summary,
            error_dense=final['error_dense'],
            error_single=final['error_single'],
            steps=final['step'],
            wall_seconds=time.time() - start,
        ),
    )
    print(
        'Final test error: dense %.4f, single view %.4f (%d steps). Results in %s'
        % (final['error_dense'], final['error_single'], final['step'], cfg.result)
    )
    return 0
