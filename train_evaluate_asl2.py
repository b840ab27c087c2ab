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

import json
import math
import os
import signal
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np
from absl import flags

import cli
import dataset
import device
import distribute
import execution
import networks
from utils import IMAGES_PER_LABELED_STEP, MODES, UsageError

SKIPPED_FILE = 'skipped_images.txt'  # image files that could not be decoded, one per line
GRAPH_CONSTANT_LIMIT = 2**31  # bytes; TF 1.15 keeps the training set in its GraphDef


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the entry's flags on ``fv`` (a fresh FlagValues per run)."""
    flags.DEFINE_string(
        'data', 'cifar10', 'Dataset name: %s.' % ', '.join(dataset.DATASETS), flag_values=fv
    )
    flags.DEFINE_string(
        'dataset',
        None,
        'Folder holding the dataset files (see dataset/dataset.txt); '
        "default: the dataset's usual folder.",
        flag_values=fv,
    )
    flags.DEFINE_alias('data_path', 'dataset', flag_values=fv)
    flags.DEFINE_integer(
        'image_size',
        32,
        '--data=folder: side in pixels of the square images '
        'the network takes (shorter side resized to it, centre cropped); '
        'at least 8.',
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'hflip',
        None,
        'Mirror labeled images left-right as augmentation and in '
        "the dense evaluation; default: the dataset's (on for CIFAR, "
        'Fashion-MNIST and --data=folder, off for SVHN).',
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'zca',
        None,
        "ZCA whitening after GCN; default: the dataset's (on for "
        'CIFAR, off otherwise: its cost grows with the cube of H*W*C).',
        flag_values=fv,
    )
    flags.DEFINE_float(
        'test_fraction',
        0.1,
        '--data=folder without a test/ folder: fraction of '
        "each class's labeled images held out for testing (seed 1).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        'cache',
        None,
        '--data=folder: folder of the decoded-image cache, '
        'reusable by later runs; default <result>/cache.',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'network', 'convnet', 'Backbone: %s.' % ', '.join(networks.NETWORKS), flag_values=fv
    )
    flags.DEFINE_integer(
        'labels',
        None,
        'Number of labeled training images (a multiple of the '
        'class count, or the training set size for all); default 1000, for '
        '--data=folder every labeled image.',
        flag_values=fv,
    )
    flags.DEFINE_enum(
        'mode',
        'asl',
        MODES,
        'asl: self-supervision on the labeled images only; '
        'sesemi: semi-supervised, unlabeled pool = whole training set; '
        'supervised: no self-supervised head (baseline).',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'epochs',
        None,
        'Training epochs (passes over the pool); default 300 for '
        "asl/supervised, the dataset's SESEMI default (50 CIFAR, 30 SVHN) for sesemi "
        '(--data=folder: 1.5 million pool images, at most 30 epochs).',
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'batch_size',
        16,
        'Images per step drawn from the pool; the labeled branch takes 6x as many.',
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_float('base_lr', 0.05, 'Learning rate at step 0.', lower_bound=0, flag_values=fv)
    flags.DEFINE_float(
        'lr_decay_power',
        0.5,
        'Power of the polynomial decay of the learning rate to 0 at the last step.',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_string(
        'result',
        None,
        'Output folder; default results/<data>_<network>_<mode>_<labels>.',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'seed',
        0,
        'Seed of weights init, batch order and augmentation '
        '(the labeled split always uses the reference seed 1).',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'eval_every',
        0,
        'Evaluate on the test set every N epochs (0: only at the end).',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'eval_every_steps',
        0,
        'Also evaluate on the test set every N training '
        'steps, inside epochs too (0: off); for sesemi, whose epochs are long.',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'max_steps',
        None,
        'Cap on total training steps; the learning-rate schedule spans the capped length.',
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_float(
        'width',
        1.0,
        "Channel multiplier of the trunk (1.0 = the paper's networks).",
        lower_bound=0.01,
        flag_values=fv,
    )
    flags.DEFINE_string(
        'gpu_id', None, 'Sets CUDA_VISIBLE_DEVICES (e.g. 0); default: leave as is.', flag_values=fv
    )
    flags.DEFINE_float(
        'super_dropout',
        None,
        'Dropout rate before the supervised head; default '
        "the reference's (0.5 for convnet/wrn on SVHN, else 0.2).",
        lower_bound=0,
        upper_bound=0.99,
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'deterministic',
        False,
        'Single-threaded, deterministic TensorFlow ops '
        '(slower; makes a run repeatable bit for bit on CPU).',
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'resume',
        False,
        'Continue from the newest good checkpoint of --result '
        '(refused if the saved args.json defines a different run).',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'ckpt_path',
        None,
        'Checkpoint folder (default <result>/checkpoints); giving '
        'it also resumes from it, as the ModelZoo scripts expect.',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'ckpt_every_steps',
        0,
        'Save a checkpoint every N training steps (0: at the end of every epoch).',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'keep_checkpoints',
        3,
        'How many of the newest checkpoints to keep.',
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'log_every_seconds',
        60,
        'When stdout is not a terminal (nohup, ModelArts, '
        'CI), print a progress line at least this often (0: only the line per '
        'epoch).',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'precise_bn',
        0,
        'At the final evaluation, also evaluate (and save in '
        'model.h5) BatchNorm statistics recomputed at the final weights over this '
        "many labeled-branch batches (0: off, the reference's moving averages "
        'only); may change on --resume.',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'dry_run',
        False,
        'Validate flags and data, build the model, print the '
        'configuration and model summary, and exit without training.',
        flag_values=fv,
    )
    device.define_flags(fv)
    execution.define_flags(fv)
    distribute.define_flags(fv)


def parse_config(argv: List[str]) -> dict:
    """Parses and resolves the flags into a plain config dict.

    Raises:
        UsageError: unknown or malformed flags, unknown dataset or network.
    """
    return configure(argv)[0]


def configure(argv: List[str]):
    """Parses and resolves the flags; returns (config dict, the run's ``dataset.DatasetInfo``).

    Raises:
        UsageError: unknown or malformed flags, unknown dataset or network, a bad
            image folder.
    """
    fv, positional = cli.parse_flags(define_flags, argv)
    if positional:
        raise UsageError(
            'unexpected argument %s; all inputs are flags (see --help)' % positional[0]
        )
    cfg = {name: fv[name].value for name in fv if name != 'data_path'}
    networks.check(cfg['network'])
    cfg['dataset'] = cfg['dataset'] or dataset.get(cfg['data']).default_dir
    info = dataset.describe(cfg['data'], cfg['dataset'], cfg)
    if cfg['labels'] is None:
        cfg['labels'] = info.default_labels  # None: every labeled image
    if cfg['epochs'] is None:
        cfg['epochs'] = info.sesemi_epochs if cfg['mode'] == 'sesemi' else dataset.ASL_EPOCHS
    if cfg['result'] is None:
        cfg['result'] = os.path.join(
            'results',
            '%s_%s_%s_%s' % (cfg['data'], cfg['network'], cfg['mode'], cfg['labels'] or 'all'),
        )
    # Dropout settings of the reference: heavier on SVHN for convnet (and wrn's head).
    svhn = cfg['data'] == 'svhn'
    if cfg['super_dropout'] is None:
        cfg['super_dropout'] = 0.5 if svhn and cfg['network'] in ('convnet', 'wrn') else 0.2
    cfg['in_network_dropout'] = 0.5 if svhn and cfg['network'] == 'convnet' else 0.0
    cfg['zca'], cfg['hflip'] = info.zca, info.hflip
    if info.layout is not None and not cfg['dry_run']:
        cfg['cache'] = os.path.abspath(cfg['cache'] or os.path.join(cfg['result'], 'cache'))
    if cfg['ckpt_path']:
        cfg['resume'] = True
    else:
        cfg['ckpt_path'] = os.path.join(cfg['result'], 'checkpoints')
    distribute.check_flags(cfg)  # first: --cpu_replicas selects the CPU
    device.check_flags(cfg)
    execution.check_flags(cfg)
    return cfg, info


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


def preprocess(x_train: Optional[np.ndarray], x_test: np.ndarray, zca: bool):
    """GCN on both sets, then (if ``zca``) ZCA fitted on the training set.

    ``x_train`` may be None when there is no ZCA to fit (the input pipeline then
    normalises the training images itself).

    Returns:
        (x_train, x_test, the fitted ``utils.ZCA`` or None), the ZCA for the model file.
    """
    from utils import global_contrast_normalize, zca_whitener

    x_test = global_contrast_normalize(x_test)
    if x_train is not None:
        x_train = global_contrast_normalize(x_train)
    whiten = None
    if zca:
        whiten = zca_whitener(x_train)
        x_train, x_test = whiten(x_train), whiten(x_test)
    return x_train, x_test, whiten


class Training:
    """One training run: the data, the models and the schedule, built from a config.

    The constructor checks the flags against the data and plans the steps without
    TensorFlow, so that bad input is reported before TensorFlow loads; ``build``
    then makes the models.
    """

    def __init__(self, cfg: dict, data: dataset.Data):
        """Draws the labeled split and sizes the run.

        Raises:
            UsageError: --labels impossible for the training set, or --batch_size
                larger than the pool.
        """
        import utils

        self.cfg = cfg
        info = data.info
        (x_train, y_train), (self.x_test, self.y_test) = data.train, data.test
        n_labels = len(y_train) if cfg['labels'] is None else cfg['labels']
        self.split = utils.labeled_indices(y_train, n_labels, info.n_classes)
        self.self_supervised = cfg['mode'] != 'supervised'
        self.labeled = np.asarray(self.split, dtype=np.int64)
        self.pool_size = len(x_train) if cfg['mode'] == 'sesemi' else len(self.labeled)
        self.x_train, self.y_train = x_train, y_train
        self.info = info
        self.split_files, self.skipped = (
            data.split,
            data.skipped,
        )  # for split.json and the skip list
        self.plan(distribute.known_replicas(cfg) or 1, 1)

    def plan(self, replicas: int, share: float) -> None:
        """Sizes the run for ``replicas`` replicas (--scale_batch), of which this
        process trains the fraction ``share`` of every step.

        Raises:
            UsageError: the global batch is larger than the pool.
        """
        cfg = self.cfg
        self.batch_size, self.base_lr = distribute.scaled(cfg, replicas)
        self.steps_per_epoch = self.pool_size // self.batch_size
        if self.steps_per_epoch == 0:
            raise UsageError(
                '--batch_size=%d%s is larger than the %d images of the pool; lower it'
                % (
                    cfg['batch_size'],
                    ' x %d replicas' % replicas if cfg['scale_batch'] else '',
                    self.pool_size,
                )
            )
        self.total_steps = self.steps_per_epoch * cfg['epochs']
        if cfg['max_steps']:
            self.total_steps = min(self.total_steps, cfg['max_steps'])
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        # The images this process trains on per step (its replicas' slices).
        self.images_per_step = (
            int(self.batch_size * share)
            * IMAGES_PER_LABELED_STEP
            * (2 if self.self_supervised else 1)
        )

    def build(self, parallel: distribute.DataParallel) -> None:
        """Builds and compiles the models in the strategy's scope (after the device
        and the strategy are configured)."""
        import utils
        from compat import keras, set_seed

        cfg, info = self.cfg, self.info
        self.parallel = parallel
        self.plan(parallel.replicas, len(parallel.parts) / parallel.replicas)
        cfg.update(execution.configure(cfg, cfg['device'], self.steps_per_epoch))
        set_seed(cfg['seed'])

        def make_models():
            trunk = networks.get(cfg['network'])(
                info.shape, cfg['in_network_dropout'], cfg['width']
            )
            return utils.build_models(
                trunk, info.shape, info.n_classes, self.self_supervised, cfg['super_dropout']
            )

        self.make_models = make_models
        with parallel.scope(), distribute.network_scope(cfg):
            self.model, self.inference = make_models()
            self.schedule = utils.lr_schedule(self.base_lr, self.total_steps, cfg['lr_decay_power'])
            utils.compile_model(
                self.model,
                self.schedule,
                self.self_supervised,
                device.optimizer_wrapper(cfg, parallel.all_reduce_wrapper()),
                **execution.compile_options(cfg),
            )
        # Evaluated and saved: the inference model itself, or under a strategy a plain
        # copy that gets its weights, with the replicas' mean statistics, before each use.
        self.evaluated = make_models()[1] if parallel.replicated() else self.inference
        if cfg['xla'] == 'on':
            self.evaluated.jit_compile = True  # the dense evaluation's predict calls
        self.keras = keras

    def preprocess(self) -> None:
        """GCN (and ZCA); a uint8 training set is converted step by step in the pipeline."""
        import model_io

        if self.x_train.dtype == np.uint8:  # ZCA, if asked for, is fitted on a float copy
            fit_on = dataset.to_unit_float(self.x_train) if self.cfg['zca'] else None
            _, self.x_test, self.zca = preprocess(fit_on, self.x_test, self.cfg['zca'])
        else:
            self.x_train, self.x_test, self.zca = preprocess(
                self.x_train, self.x_test, self.cfg['zca']
            )
        self.preprocessing = model_io.Preprocessing.for_dataset(
            self.info, self.zca, self.cfg['seed']
        )

    def dataset(self, first_step: int = 0):
        """The training stream, starting at step ``first_step``."""
        import utils

        cfg = self.cfg
        pool = {'sesemi': np.arange(len(self.x_train)), 'asl': self.labeled, 'supervised': []}
        self.sampler = utils.BatchSampler(
            self.labeled,
            pool[cfg['mode']],
            self.batch_size * IMAGES_PER_LABELED_STEP,
            self.batch_size,
            cfg['seed'],
        )
        # One-hot rows of the labeled images; the unlabeled images after them get zeros.
        labels = np.zeros((len(self.x_train), self.info.n_classes), np.float32)
        labels[np.arange(len(self.y_train)), self.y_train] = 1
        convert = self.preprocessing.apply_tf if self.x_train.dtype == np.uint8 else None
        return self.parallel.dataset(
            lambda parts, n_parts: utils.make_dataset(
                self.x_train,
                labels,
                self.sampler,
                cfg['seed'],
                self.info.hflip,
                first_step,
                convert,
                parts,
                n_parts,
            )
        )

    def fit_phases(self, step: int):
        """Keras fit calls that train from ``step`` to ``total_steps``.

        Yields (initial_epoch, epochs, steps_per_epoch, first_step): a run resumed in
        the middle of an epoch first finishes that epoch, then goes on in whole
        epochs; a last epoch cut short by --max_steps is a call of its own, so that
        no execution of several steps runs past the end.
        """
        spe, end = self.steps_per_epoch, self.total_steps
        if step % spe and step < end:
            steps = min(spe - step % spe, end - step)
            yield step // spe, step // spe + 1, steps, step
            step += steps
        whole = end - end % spe
        if step < whole:
            yield step // spe, whole // spe, spe, step
            step = whole
        if step < end:
            yield step // spe, step // spe + 1, end - step, step

    def precise(self, count: int):
        """A copy of the inference model whose BatchNorm statistics are recomputed over
        ``count`` fixed labeled-branch batches (``precise_bn``); the trained models and
        their statistics are left as they are."""
        import precise_bn

        copy = self.make_models()[1]
        copy.set_weights(self.inference.get_weights())
        if self.cfg['xla'] == 'on':
            copy.jit_compile = True
        labeled = self.x_train[self.labeled]
        convert = self.preprocessing.apply_tf if labeled.dtype == np.uint8 else None
        precise_bn.recompute(
            copy,
            precise_bn.labeled_batches(
                labeled,
                self.batch_size * IMAGES_PER_LABELED_STEP,
                self.cfg['seed'],
                self.info.hflip,
                convert,
            ),
            count,
        )
        return copy

    def evaluate(self, model=None) -> dict:
        """Test errors of the current weights (under multi_worker, every worker at once),
        or of ``model``'s."""
        import utils

        if model is None and self.evaluated is not self.inference:
            self.evaluated.set_weights(self.inference.get_weights())
        return utils.evaluate(
            model or self.evaluated,
            self.x_test,
            self.y_test,
            self.info.hflip,
            seed=self.cfg['seed'],
        )


class ProgressLines:
    """Progress for logs that nobody watches live (nohup, ModelArts, CI): a line with
    the step, losses, images/s and ETA at least every ``seconds`` (0: never)."""

    def __init__(self, total_steps: int, images_per_step: int, seconds: float):
        self.total, self.images_per_step, self.seconds = total_steps, images_per_step, seconds
        self.start = self.last = None  # (time, step) of the first and the last report

    def begin(self, step: int) -> None:
        """Marks the start of training (once; later calls are ignored)."""
        if self.start is None:
            self.start = self.last = (time.time(), step)

    def update(self, step: int, losses: dict) -> None:
        now = time.time()
        if self.start is None or not self.seconds or now - self.last[0] < self.seconds:
            return
        rate = (step - self.start[1]) / max(now - self.start[0], 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float('nan')
        print(
            'step %d/%d  %s  %.0f img/s  ETA %s'
            % (
                step,
                self.total,
                '  '.join('%s %.4f' % kv for kv in sorted(losses.items())),
                rate * self.images_per_step,
                format_seconds(eta),
            ),
            flush=True,
        )
        self.last = (now, step)


def format_seconds(seconds: float) -> str:
    """h:mm:ss, or '?' when unknown."""
    if not math.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def make_logger(run: Training, rows: List[dict], ckpts, interrupt):
    """The Keras callback that watches the steps and closes every epoch.

    After each execution (``steps_per_execution`` steps; one on TF 1.15): stops
    at ``total_steps``; stops at once on a non-finite loss (no checkpoint is
    written, so the last good one stays the newest); saves a checkpoint every
    ``ckpt_every_steps`` or when a SIGTERM/Ctrl-C arrived; shows progress.
    Under multi_worker the workers first agree whether any of them was signalled
    (``vote``).
    Per epoch: evaluates when due, appends the epoch's row to metrics.jsonl,
    prints it, then saves a checkpoint; every ``eval_every_steps`` inside an
    epoch, a row with the epoch's losses so far and an evaluation. The step count is read from the
    optimizer once per epoch and followed from Keras' batch index in between.
    """
    from checkpoints import fault_point, folder_guard, write_metrics
    from compat import ScalarWriter, keras, to_float

    cfg, parallel = run.cfg, run.parallel
    metrics_path = os.path.join(cfg['result'], 'metrics.jsonl')
    log_path = os.path.join(cfg['result'], 'train.log')
    check_folder = folder_guard(cfg['result'])
    tensorboard = (
        ScalarWriter(os.path.join(cfg['result'], 'tensorboard')) if parallel.chief else None
    )
    # A progress bar with the run's ETA where someone watches a terminal, else lines.
    if sys.stdout.isatty():
        progress = keras.utils.Progbar(run.total_steps)
        lines = None
    else:
        progress = None
        lines = ProgressLines(run.total_steps, run.images_per_step, cfg['log_every_seconds'])

    class EpochLogger(keras.callbacks.Callback):
        nan = None  # (step, logs) of the first non-finite loss
        stop_signal = None  # the signal to stop for, once agreed (``vote``)
        saved_step = -1
        current = 0  # the step count after the last execution

        def step(self) -> int:
            return self.current

        def vote(self) -> bool:
            """Whether to stop for a SIGTERM or Ctrl-C. Under multi_worker every worker
            votes at the same point and all stop if one was signalled; a signal that
            arrives after a vote waits for the next, so all stop at the same step."""
            if self.stop_signal is None and parallel.agree(interrupt.signal is not None):
                self.stop_signal = interrupt.signal or signal.SIGTERM  # another worker's
            return self.stop_signal is not None

        def save(self, step: int) -> None:
            if step != self.saved_step:
                check_folder()
                ckpts.save(step)
                self.saved_step = step

        def evaluation_due(self, step: int) -> bool:
            every = cfg['eval_every_steps']
            return bool(every) and step % every == 0

        def record(self, epoch: int, step: int, logs: dict, evaluate: bool) -> dict:
            """Appends the row of ``step`` to metrics.jsonl, the log, the console and TensorBoard."""
            seconds = time.time() - self.start
            steps = step - self.start_step
            row = {
                'epoch': epoch + 1,
                'step': step,
                'lr': to_float(run.schedule(step)),
                'loss': float(logs['loss']),
                'super_loss': float(
                    logs.get('super_clf_loss', logs.get('categorical_crossentropy'))
                ),
                'self_loss': float(logs['self_clf_loss']) if 'self_clf_loss' in logs else None,
                'ms_per_step': 1000.0 * seconds / max(1, steps),
                'images_per_sec': steps * run.images_per_step / max(seconds, 1e-9),
            }
            if evaluate:
                fault_point('evaluation', step)
                row.update(run.evaluate())
            rows.append(row)
            line = format_row(row, run.epochs, run.total_steps)
            print(('\n' if progress else '') + line, flush=True)
            if not parallel.chief:
                return row
            check_folder()
            write_metrics(metrics_path, rows)
            with open(log_path, 'a') as f:
                f.write(line + '\n')
            tensorboard.write(
                step,
                {
                    ('test/' if k.startswith('error') else 'train/') + k: v
                    for k, v in row.items()
                    if v is not None and k not in ('epoch', 'step')
                },
            )
            return row

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.current = int(to_float(self.model.optimizer.iterations))
            self.start, self.start_step = time.time(), self.current
            if lines:
                lines.begin(self.current)

        def on_train_batch_end(self, batch, logs=None):
            # ``batch`` is the index, in this epoch, of the execution's last step.
            previous, step = self.current, self.start_step + batch + 1
            self.current = step
            for passed in range(previous + 1, step + 1):
                fault_point('step', passed)
            losses = {k: float(v) for k, v in (logs or {}).items() if 'loss' in k}
            if progress:
                progress.update(step, [(k, v) for k, v in sorted(losses.items())])
            elif lines:
                lines.update(step, losses)
            stopping = self.vote()
            if not all(np.isfinite(v) for v in losses.values()):
                self.nan = (step, losses)
                self.model.stop_training = True
            elif stopping:
                self.save(step)
                self.model.stop_training = True
            elif step >= run.total_steps:
                self.model.stop_training = True
            else:
                # Inside an epoch only: the epoch's end evaluates and records by itself.
                if self.evaluation_due(step) and step % run.steps_per_epoch:
                    self.record(self.epoch, step, logs or {}, evaluate=True)
                if cfg['ckpt_every_steps'] and step % cfg['ckpt_every_steps'] == 0:
                    self.save(step)

        on_batch_end = on_train_batch_end  # TF 1.15 calls this name

        def on_epoch_end(self, epoch, logs=None):
            step = self.step()
            if self.nan or (self.stop_signal is not None and step < run.total_steps):
                return  # a partial epoch: its row is written when it is finished
            last = step >= run.total_steps
            self.record(
                epoch,
                step,
                logs or {},
                evaluate=last
                or self.evaluation_due(step)
                or (cfg['eval_every'] and (epoch + 1) % cfg['eval_every'] == 0),
            )
            if not cfg['ckpt_every_steps'] or last:
                self.save(step)

    return EpochLogger()


def format_row(row: dict, epochs: int, total_steps: int) -> str:
    """One human-readable line per epoch."""
    text = 'epoch %d/%d  step %d/%d  lr %.5f  loss %.4f (super %.4f' % (
        row['epoch'],
        epochs,
        row['step'],
        total_steps,
        row['lr'],
        row['loss'],
        row['super_loss'],
    )
    if row['self_loss'] is not None:
        text += ', self %.4f' % row['self_loss']
    text += ')  %.1f ms/step  %.0f img/s' % (row['ms_per_step'], row['images_per_sec'])
    if 'error_dense' in row:
        text += '  test error dense %.4f single %.4f' % (row['error_dense'], row['error_single'])
    return text


def print_summary(model) -> None:
    """Keras' model summary, with the parameter totals in one format on both TF generations."""

    def print_line(line, *args, **kwargs):
        if not line.lstrip().startswith(
            ('Total params', 'Trainable params', 'Non-trainable params')
        ):
            print(line)

    model.summary(print_fn=print_line)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    print(
        f'Total params: {total:,}\nTrainable params: {trainable:,}\nNon-trainable params: {total - trainable:,}'
    )


def run(argv: List[str]) -> int:
    """Runs the entry with ``argv`` (argv[0] is the program name); returns the exit code."""
    cfg, info = configure(argv)
    if cfg['gpu_id'] is not None:
        os.environ['CUDA_VISIBLE_DEVICES'] = cfg['gpu_id']
    if not cfg['dry_run']:  # before the data, whose decode cache may live in the result folder
        if cfg['resume']:
            check_saved_run(cfg)  # the flags, before TensorFlow loads
        else:
            check_no_earlier_run(cfg)
    data = dataset.load_run(info, cfg['dataset'], cfg['cache'] if not cfg['dry_run'] else None)
    if data.skipped:
        print(
            'warning: %d of the image files cannot be decoded and are left out%s'
            % (
                len(data.skipped),
                ''
                if cfg['dry_run']
                else '; listed in %s' % os.path.join(cfg['result'], SKIPPED_FILE),
            ),
            file=sys.stderr,
        )
    training = Training(cfg, data)  # checks --labels and --batch_size against the data
    if not cfg['dry_run']:
        prepare_result_folder(cfg['result'])
    # Every check of the input is done: TensorFlow loads only now.
    execution.prepare_environment(cfg)
    from compat import TF1, make_deterministic, tf

    if TF1 and data.train[0].nbytes >= GRAPH_CONSTANT_LIMIT:
        raise UsageError(
            'the %d training images take %.1f GB, more than a TensorFlow 1.15 graph '
            'can hold (2 GB); train with TensorFlow 2 (.venv), a smaller --image_size '
            'or fewer images' % (len(data.train[0]), data.train[0].nbytes / 1e9)
        )
    if cfg['deterministic']:
        make_deterministic()
    cfg.update(device.configure(cfg))
    parallel = distribute.configure(
        cfg, device.import_adapter()[0] if cfg['device'] == 'npu' else None
    )
    cfg['replicas'] = parallel.replicas
    if cfg['resume'] and not cfg['dry_run']:
        check_saved_run(cfg)  # again with what configure resolved: precision and replicas
    training.build(parallel)
    cfg['tf_version'] = tf.__version__
    print('Configuration:\n' + json.dumps(cfg, indent=2, sort_keys=True), flush=True)
    print(
        'Labeled images %d, steps per epoch %d, epochs %d, total steps %d'
        % (len(training.split), training.steps_per_epoch, training.epochs, training.total_steps)
    )
    if parallel.replicas > 1 or cfg['distribute'] != 'none':
        print(
            'Data parallel (%s): %d replicas, global batch %d (%d per replica), base lr %g'
            % (
                cfg['distribute'],
                parallel.replicas,
                training.batch_size,
                training.batch_size // parallel.replicas,
                training.base_lr,
            )
        )
    print_summary(training.model)
    if cfg['dry_run']:
        print(device.describe(cfg))
        return 0
    return train_and_evaluate(training)


def check_saved_run(cfg: dict) -> None:
    """Refuses --resume when the result folder holds a different run."""
    from checkpoints import check_resumable

    path = os.path.join(cfg['result'], 'args.json')
    if os.path.exists(path):
        with open(path) as f:
            check_resumable(json.load(f), cfg)


def check_no_earlier_run(cfg: dict) -> None:
    """Refuses to start afresh where an earlier run left checkpoints or metrics,
    which a new run would overwrite or mix with its own."""
    from checkpoints import read_metrics

    earlier = read_metrics(os.path.join(cfg['result'], 'metrics.jsonl'))
    has_checkpoints = os.path.exists(os.path.join(cfg['ckpt_path'], 'checkpoint'))
    if earlier or has_checkpoints:
        raise UsageError(
            'result folder %s holds an earlier run (%s); pass --resume to continue '
            'it, or another --result (or remove the folder) to start over'
            % (
                cfg['result'],
                'step %d' % earlier[-1]['step']
                if earlier
                else 'checkpoints in %s' % cfg['ckpt_path'],
            )
        )


def train_and_evaluate(training: Training) -> int:
    """Trains (resuming if asked), then writes model.h5 and result.json.

    Returns:
        0 when done; 3 on a non-finite loss; 4 when another worker of a
        multi-worker job failed; 128 + signal number when stopped by SIGTERM or
        Ctrl-C (on any worker of a multi-worker job) after saving a checkpoint.
    """
    from checkpoints import (
        Checkpoints,
        Interrupt,
        fault_point,
        read_metrics,
        write_atomic,
        write_json,
        write_metrics,
    )
    from compat import to_float

    cfg, result, parallel = training.cfg, training.cfg['result'], training.parallel
    ckpts = Checkpoints(
        parallel.checkpoint_folder(cfg['ckpt_path']),
        training.model,
        cfg['keep_checkpoints'],
        source=cfg['ckpt_path'],
        temporary=not parallel.chief,
    )
    step, rows = 0, []
    if cfg['resume']:
        with parallel.scope():  # the optimizer's slots are made as the model's
            restored = ckpts.restore_newest(warn=lambda text: print(text, file=sys.stderr))
        if restored:
            step = int(to_float(training.model.optimizer.iterations))
            rows = [
                r for r in read_metrics(os.path.join(result, 'metrics.jsonl')) if r['step'] <= step
            ]
            print('Resuming from %s at step %d' % (restored, step), flush=True)
        else:
            print('No usable checkpoint in %s; starting from step 0' % cfg['ckpt_path'], flush=True)
    if parallel.chief:
        write_json(os.path.join(result, 'args.json'), cfg)
        write_json(
            os.path.join(result, 'split.json'),
            dict(training.split_files, labeled_indices=training.split),
        )
        if training.skipped:
            write_atomic(
                os.path.join(result, SKIPPED_FILE),
                ''.join(line + '\n' for line in training.skipped),
            )
        write_metrics(os.path.join(result, 'metrics.jsonl'), rows)

    training.preprocess()
    start = time.time()
    with Interrupt() as interrupt:
        logger = make_logger(training, rows, ckpts, interrupt)
        device_callbacks = device.callbacks(cfg) + parallel.callbacks()
        try:
            for initial_epoch, epochs, steps_per_epoch, first_step in training.fit_phases(step):
                training.model.fit(
                    training.dataset(first_step),
                    initial_epoch=initial_epoch,
                    epochs=epochs,
                    steps_per_epoch=steps_per_epoch,
                    verbose=0,
                    callbacks=[logger] + device_callbacks,
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
                % (logger.step(), type(err).__name__, cfg['ckpt_path']),
                file=sys.stderr,
            )
            return distribute.EXIT_PEER_FAILED
    if logger.nan:
        nan_step, losses = logger.nan
        print(
            'error: non-finite loss at step %d (%s); stopped without saving, the newest good '
            'checkpoint is in %s; lower --base_lr'
            % (
                nan_step,
                ', '.join('%s %.4g' % kv for kv in sorted(losses.items())),
                cfg['ckpt_path'],
            ),
            file=sys.stderr,
        )
        return 3
    if logger.stop_signal is not None and logger.step() < training.total_steps:
        print(
            'Interrupted at step %d; checkpoint saved. Continue with the same flags plus --resume'
            % logger.step(),
            file=sys.stderr,
        )
        return 128 + logger.stop_signal

    final = rows[-1]
    fault_point('model', final['step'])
    if not parallel.chief:
        print(
            'Final test error: dense %.4f, single view %.4f (%d steps); the chief writes the '
            'results' % (final['error_dense'], final['error_single'], final['step'])
        )
        return 0
    import model_io

    # The evaluated model holds the weights of the final evaluation, which every run ends with.
    saved, statistics = training.evaluated, {'model_statistics': 'moving'}
    if cfg['precise_bn']:
        began = time.time()
        saved = training.precise(cfg['precise_bn'])
        precise = training.evaluate(saved)
        statistics = {
            'model_statistics': 'precise',
            'precise_bn': cfg['precise_bn'],
            'error_dense_moving': final['error_dense'],
            'error_single_moving': final['error_single'],
            'error_dense_precise': precise['error_dense'],
            'error_single_precise': precise['error_single'],
        }
        print(
            'Precise BatchNorm statistics (%d batches, %.0f s): test error dense %.4f, single '
            'view %.4f'
            % (
                cfg['precise_bn'],
                time.time() - began,
                precise['error_dense'],
                precise['error_single'],
            )
        )
    model_io.save_model(os.path.join(result, 'model.h5'), saved, training.preprocessing)
    write_json(
        os.path.join(result, 'result.json'),
        dict(
            statistics,
            error_dense=final['error_dense'],
            error_single=final['error_single'],
            steps=final['step'],
            wall_seconds=time.time() - start,
            tf_version=cfg['tf_version'],
            labels=cfg['labels'],
            mode=cfg['mode'],
            network=cfg['network'],
            data=cfg['data'],
            precision=cfg['precision'],
            xla=cfg['xla'],
            steps_per_execution=cfg['steps_per_execution'],
            distribute=cfg['distribute'],
            replicas=cfg['replicas'],
        ),
    )
    print(
        'Final test error: dense %.4f, single view %.4f (%d steps). Results in %s'
        % (final['error_dense'], final['error_single'], final['step'], result)
    )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: one line on stderr and exit code 2 for bad input."""
    return cli.main(run, argv, io_note='files written before are intact')


if __name__ == '__main__':
    sys.exit(main())
