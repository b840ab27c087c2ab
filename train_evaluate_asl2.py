r"""Train and evaluate SESEMI: supervised learning regularised by a self-supervised
rotation/flip proxy task (Tran 2019, arXiv:1906.10343).

Example:
    python train_evaluate_asl2.py --data=cifar10 --dataset=datasets/cifar-10-batches-py \
        --network=convnet --labels=1000 --mode=asl --result=results/c10_1000
    python train_evaluate_asl2.py --data=folder --dataset=photos --mode=sesemi \
        --result=results/photos

Flags are validated and the data is read before TensorFlow is imported, so bad
input ends in one line on stderr (exit code 2) with nothing written.
"""

import dataclasses
import json
import os
import sys
from typing import Callable, List, Optional, Sequence

import dataset
from sesemi_tf import arguments, checks, cli, config, plan, results, startup


def run(argv: List[str], callbacks: Sequence[Callable] = ()) -> int:
    """Runs the entry with ``argv`` (argv[0] is the program name); returns the exit code.

    ``callbacks``: functions of the built ``Training`` that make further Keras callbacks.
    """
    cfg, info = arguments.parse(argv, __doc__)  # the flags, checked; no TensorFlow yet
    results.check_folder(cfg)  # before the data, whose decode cache may live in the folder
    data = dataset.load_run(info, cfg.dataset, None if cfg.dry_run else cfg.cache)
    report_skipped(cfg, data.skipped)
    labeled = plan.labeled_split(cfg, data.train[1], data.info.n_classes)
    pool = plan.pool_size(cfg, len(data.train[0]), len(labeled))
    plan.make_plan(cfg, pool, checks.known_replicas(cfg) or 1)  # --batch_size against the pool
    if not cfg.dry_run:
        results.prepare_result_folder(cfg.result)
    startup.prepare(cfg)

    # Every check of the input is done: TensorFlow loads only now.
    from sesemi_base.compat import make_deterministic, tf
    from sesemi_tf import device, npu, parallel, progress
    from sesemi_tf.pipeline import check_graph_size
    from sesemi_tf.run import train_and_evaluate
    from sesemi_tf.training import Training

    check_graph_size(data.train[0])
    if cfg.deterministic:
        make_deterministic()
    cfg = device.configure(cfg)
    strategy = parallel.configure(cfg, npu.import_adapter()[0] if cfg.device == 'npu' else None)
    cfg = dataclasses.replace(cfg, replicas=strategy.replicas, tf_version=tf.__version__)
    if cfg.resume and not cfg.dry_run:
        results.check_resumed(cfg, config.RESOLVED_LATER)  # what TensorFlow resolved
    training = Training(cfg, data, labeled, strategy)
    describe(training)
    progress.print_summary(training.model)
    if cfg.dry_run:
        print(device.describe(training.cfg))
        return 0
    return train_and_evaluate(training, data.split, data.skipped, callbacks)


def report_skipped(cfg, skipped: List[str]) -> None:
    """One warning line when image files of a folder dataset cannot be decoded."""
    if skipped:
        where = (
            '' if cfg.dry_run else '; listed in %s' % os.path.join(cfg.result, results.SKIPPED_FILE)
        )
        print(
            'warning: %d of the image files cannot be decoded and are left out%s'
            % (len(skipped), where),
            file=sys.stderr,
        )


def describe(training) -> None:
    """Prints the configuration and the run's size."""
    cfg, steps = training.cfg, training.plan
    print(
        'Configuration:\n' + json.dumps(config.to_json(cfg), indent=2, sort_keys=True), flush=True
    )
    print(
        'Labeled images %d, steps per epoch %d, epochs %d, total steps %d'
        % (len(training.labeled), steps.steps_per_epoch, steps.epochs, steps.total_steps)
    )
    if cfg.replicas > 1 or cfg.distribute != 'none':
        print(
            'Data parallel (%s): %d replicas, global batch %d (%d per replica), base lr %g'
            % (
                cfg.distribute,
                cfg.replicas,
                steps.batch_size,
                steps.batch_size // cfg.replicas,
                steps.base_lr,
            )
        )


def main(argv: Optional[List[str]] = None, callbacks: Sequence[Callable] = ()) -> int:
    """Command-line entry: one line on stderr and exit code 2 for bad input."""
    return cli.main(
        lambda args: run(args, callbacks), argv, io_note='files written before are intact'
    )


if __name__ == '__main__':
    sys.exit(main())
