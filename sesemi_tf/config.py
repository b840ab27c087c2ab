"""The run's configuration: one frozen value, built once from the flags.

Every flag of the training entry is a field of ``RunConfig`` with its default,
its help text and whether it defines the run (a flag whose change makes a saved
run a different run, refused by ``--resume``). ``sesemi_tf.arguments`` makes
the absl flags from the fields, ``from_flags`` resolves their defaults (which depend on
the dataset, the mode and the result folder) without TensorFlow, and the steps
that resolve what only TensorFlow can tell (device, precision, replicas,
execution) return new values with ``dataclasses.replace``. ``args.json`` is
the config as a flat JSON object; ``from_json`` reads it back, an unknown key
ignored and a missing one taken at its default (what runs saved before it
existed ran with).

Imports no TensorFlow, so bad flags cost one line on stderr before it loads.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import dataset
import networks
from sesemi_tf import checks
from utils import MODES

DEVICES = ('auto', 'cpu', 'gpu', 'npu')
STRATEGIES = ('none', 'mirrored', 'multi_worker', 'npu')
XLA_CHOICES = ('auto', 'on', 'off')
DEFAULT_DUMP_STEP = '10'  # the ModelZoo page's default
AUTO_STEPS_PER_EXECUTION = 8  # see sesemi_tf.execution
LAUNCHER = 'test/train_multi_worker.sh'


def _flag(default, text: str, run: bool = False, **bounds):
    """A field that is a flag: its default, help text, and absl bounds or choices
    (``lower``, ``upper``, ``choices``); ``run``: it defines the run."""
    return dataclasses.field(default=default, metadata=dict(help=text, run=run, **bounds))


def _resolved(default, run: bool = False):
    """A field that no flag sets: what the run resolved (``run``: it defines the run)."""
    return dataclasses.field(default=default, metadata={'run': run})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The configuration of one training run (see the module docstring)."""

    # ------------------------------------------------------------------ data
    data: str = _flag('cifar10', 'Dataset name: %s.' % ', '.join(dataset.DATASETS), run=True)
    dataset: Optional[str] = _flag(
        None,
        "Folder holding the dataset files (see dataset/dataset.txt); default: the dataset's "
        'usual folder.',
    )
    image_size: int = _flag(
        32,
        '--data=folder: side in pixels of the square images the network takes (shorter side '
        'resized to it, centre cropped); at least 8.',
        run=True,
    )
    hflip: Optional[bool] = _flag(
        None,
        'Mirror labeled images left-right as augmentation and in the dense evaluation; default: '
        "the dataset's (on for CIFAR, Fashion-MNIST and --data=folder, off for SVHN).",
        run=True,
    )
    zca: Optional[bool] = _flag(
        None,
        "ZCA whitening after GCN; default: the dataset's (on for CIFAR, off otherwise: its cost "
        'grows with the cube of H*W*C).',
        run=True,
    )
    test_fraction: float = _flag(
        0.1,
        "--data=folder without a test/ folder: fraction of each class's labeled images held out "
        'for testing (seed 1).',
        run=True,
    )
    cache: Optional[str] = _flag(
        None,
        '--data=folder: folder of the decoded-image cache, reusable by later runs; default '
        '<result>/cache.',
    )
    labels: Optional[int] = _flag(
        None,
        'Number of labeled training images (a multiple of the class count, or the training set '
        'size for all); default 1000, for --data=folder every labeled image.',
        run=True,
    )
    # ----------------------------------------------------------------- model
    network: str = _flag('convnet', 'Backbone: %s.' % ', '.join(networks.NETWORKS), run=True)
    width: float = _flag(
        1.0,
        "Channel multiplier of the trunk (1.0 = the paper's networks).",
        run=True,
        lower=0.01,
    )
    super_dropout: Optional[float] = _flag(
        None,
        "Dropout rate before the supervised head; default the reference's (0.5 for convnet/wrn "
        'on SVHN, else 0.2).',
        run=True,
        lower=0,
        upper=0.99,
    )
    in_network_dropout: float = _resolved(0.0)  # 0.5 for convnet on SVHN, as the reference
    # -------------------------------------------------------------- training
    mode: str = _flag(
        'asl',
        'asl: self-supervision on the labeled images only; sesemi: semi-supervised, unlabeled '
        'pool = whole training set; supervised: no self-supervised head (baseline).',
        run=True,
        choices=MODES,
    )
    epochs: Optional[int] = _flag(
        None,
        "Training epochs (passes over the pool); default 300 for asl/supervised, the dataset's "
        'SESEMI default (50 CIFAR, 30 SVHN) for sesemi (--data=folder: 1.5 million pool images, '
        'at most 30 epochs).',
        run=True,
        lower=1,
    )
    batch_size: int = _flag(
        16,
        'Images per step drawn from the pool; the labeled branch takes 6x as many.',
        run=True,
        lower=1,
    )
    base_lr: float = _flag(0.05, 'Learning rate at step 0.', run=True, lower=0)
    lr_decay_power: float = _flag(
        0.5,
        'Power of the polynomial decay of the learning rate to 0 at the last step.',
        run=True,
        lower=0,
    )
    max_steps: Optional[int] = _flag(
        None,
        'Cap on total training steps; the learning-rate schedule spans the capped length.',
        run=True,
        lower=1,
    )
    seed: int = _flag(
        0,
        'Seed of weights init, batch order and augmentation (the labeled split always uses the '
        'reference seed 1).',
        run=True,
    )
    deterministic: bool = _flag(
        False,
        'Single-threaded, deterministic TensorFlow ops (slower; makes a run repeatable bit for '
        'bit on CPU).',
    )
    # ------------------------------------------------------ results and resume
    result: Optional[str] = _flag(
        None, 'Output folder; default results/<data>_<network>_<mode>_<labels>.'
    )
    resume: bool = _flag(
        False,
        'Continue from the newest good checkpoint of --result (refused if the saved args.json '
        'defines a different run).',
    )
    ckpt_path: Optional[str] = _flag(
        None,
        'Checkpoint folder (default <result>/checkpoints); giving it also resumes from it, as '
        'the ModelZoo scripts expect.',
    )
    ckpt_every_steps: int = _flag(
        0, 'Save a checkpoint every N training steps (0: at the end of every epoch).', lower=0
    )
    keep_checkpoints: int = _flag(3, 'How many of the newest checkpoints to keep.', lower=1)
    eval_every: int = _flag(
        0, 'Evaluate on the test set every N epochs (0: only at the end).', lower=0
    )
    eval_every_steps: int = _flag(
        0,
        'Also evaluate on the test set every N training steps, inside epochs too (0: off); for '
        'sesemi, whose epochs are long.',
        lower=0,
    )
    precise_bn: int = _flag(
        0,
        'At the final evaluation, also evaluate (and save in model.h5) BatchNorm statistics '
        'recomputed at the final weights over this many labeled-branch batches (0: off, the '
        "reference's moving averages only); may change on --resume.",
        lower=0,
    )
    log_every_seconds: int = _flag(
        60,
        'When stdout is not a terminal (nohup, ModelArts, CI), print a progress line at least '
        'this often (0: only the line per epoch).',
        lower=0,
    )
    dry_run: bool = _flag(
        False,
        'Validate flags and data, build the model, print the configuration and model summary, '
        'and exit without training.',
    )
    # ------------------------------------------------- device and precision
    device: str = _flag(
        'auto',
        'Where to train. auto (default): npu when the Ascend adapter imports (npu_bridge on TF '
        '1.15, npu_device on TF 2), else gpu when one is visible, else cpu.',
        choices=DEVICES,
    )
    gpu_id: Optional[str] = _flag(None, 'Sets CUDA_VISIBLE_DEVICES (e.g. 0); default: leave as is.')
    precision_mode: str = _flag(
        '',
        "Ascend precision mode: %s. Default '': the device's own (%s on npu, float32 on "
        'cpu/gpu). On cpu/gpu, %s train in mixed precision (bfloat16 on CPU and float16 on GPU '
        'under TF 2; float16 on GPU only under TF 1.15), the others in float32.'
        % (
            ', '.join(checks.PRECISION_MODES),
            checks.NPU_DEFAULT_PRECISION,
            '/'.join(checks.MIXED_MODES),
        ),
    )
    precision: Optional[str] = _resolved(None, run=True)  # float32, mixed_bfloat16, an NPU mode
    # --------------------------------------------------------- debugging aids
    over_dump: bool = _flag(
        False,
        'Overflow detection: stop at the first Inf/NaN and report the op that made it '
        '(default off).',
    )
    over_dump_path: Optional[str] = _flag(
        None, 'Folder of the overflow report and dumps; default <result>/overflow_dump.'
    )
    data_dump_flag: bool = _flag(
        False, 'Dump every tensor of the steps in --data_dump_step (default off).'
    )
    data_dump_path: Optional[str] = _flag(
        None,
        'Folder of the data dump (one sub-folder per step on cpu/gpu); default <result>/data_dump.',
    )
    data_dump_step: str = _flag(
        DEFAULT_DUMP_STEP,
        'Training steps to dump, counted from 0: numbers and a-b ranges joined by |, e.g. '
        '0|3-5|10 (default %s).' % DEFAULT_DUMP_STEP,
    )
    profiling: bool = _flag(
        False,
        'Record a profiler trace (on cpu/gpu: %d steps after the first %d; default off).'
        % (checks.PROFILE_STEPS, checks.PROFILE_SKIP_STEPS),
    )
    profiling_path: Optional[str] = _flag(
        None, 'Folder of the profiling data; default <result>/profiling.'
    )
    # -------------------------------------------------------------- execution
    xla: str = _flag(
        'auto',
        'Compile the training step and evaluation with XLA. auto (default): off, what measured '
        'faster on CPU; refused on an NPU and with the debugging aids.',
        choices=XLA_CHOICES,
    )
    steps_per_execution: int = _flag(
        0,
        'Training steps per call of the compiled training function (TF 2.x; callbacks, NaN '
        'checks and SIGTERM are seen between calls). 0 (default): %d, or 1 while a debugging '
        'aid is on, and on TF 1.15 and NPU.' % AUTO_STEPS_PER_EXECUTION,
        lower=0,
    )
    # --------------------------------------------------------- data parallelism
    distribute: str = _flag(
        'none',
        'Data-parallel training. none (default): one device; mirrored: '
        'tf.distribute.MirroredStrategy over the visible GPUs (or --cpu_replicas CPU devices), '
        'TF 2 only; multi_worker: tf.distribute.MultiWorkerMirroredStrategy, one process per '
        'worker, cluster from TF_CONFIG (see %s), TF 2 only; npu: Ascend HCCL, one process per '
        'device, from RANK_ID and RANK_SIZE (needs --device=npu).' % LAUNCHER,
        choices=STRATEGIES,
    )
    cpu_replicas: int = _flag(
        0,
        '--distribute=mirrored: mirror over this many logical CPU devices instead of the GPUs '
        '(implies --device=cpu); 0 (default): off.',
        lower=0,
    )
    scale_batch: bool = _flag(
        False,
        'Multiply --batch_size and --base_lr by the number of replicas (default off: '
        '--batch_size is the global batch of a step, split across the replicas).',
        run=True,
    )
    sync_bn: bool = _flag(
        False,
        'BatchNorm statistics over the whole step, all replicas together (TF 2 strategies '
        'only; default off: per replica).',
        run=True,
    )
    replicas: int = _resolved(1, run=True)
    # ------------------------------------------------------------------ other
    verbose: bool = _resolved(False)  # --verbose, defined for every tool by sesemi_tf.cli
    tf_version: Optional[str] = _resolved(None)


FIELDS = dataclasses.fields(RunConfig)
# Fields whose change makes a saved run a different run.
RUN_DEFINING = tuple(f.name for f in FIELDS if f.metadata['run'])
# Resolved once TensorFlow runs; compared on --resume only then.
RESOLVED_LATER = ('precision', 'replicas')


def from_flags(values: Dict[str, Any], info: 'dataset.DatasetInfo') -> RunConfig:
    """The run's configuration from the parsed flags and its dataset description,
    every default that depends on them resolved; then checked (``checks``).

    Raises:
        UsageError: a setting that cannot be used (see ``checks.check``).
    """
    values = {k: v for k, v in values.items() if k in _NAMES}
    cfg = RunConfig(**values)
    labels = info.default_labels if cfg.labels is None else cfg.labels  # None: all labeled
    epochs = cfg.epochs or (info.sesemi_epochs if cfg.mode == 'sesemi' else dataset.ASL_EPOCHS)
    result = cfg.result or os.path.join(
        'results', '%s_%s_%s_%s' % (cfg.data, cfg.network, cfg.mode, labels or 'all')
    )
    # Dropout settings of the reference: heavier on SVHN for convnet (and wrn's head).
    svhn = cfg.data == 'svhn'
    super_dropout = cfg.super_dropout
    if super_dropout is None:
        super_dropout = 0.5 if svhn and cfg.network in ('convnet', 'wrn') else 0.2
    cache = cfg.cache
    if info.layout is not None and not cfg.dry_run:
        cache = os.path.abspath(cache or os.path.join(result, 'cache'))
    folders = {
        key: getattr(cfg, key) or os.path.join(result, default)
        for key, default in (
            ('over_dump_path', 'overflow_dump'),
            ('data_dump_path', 'data_dump'),
            ('profiling_path', 'profiling'),
        )
    }
    cfg = dataclasses.replace(
        cfg,
        dataset=cfg.dataset or dataset.get(cfg.data).default_dir,
        labels=labels,
        epochs=epochs,
        result=result,
        super_dropout=super_dropout,
        in_network_dropout=0.5 if svhn and cfg.network == 'convnet' else 0.0,
        zca=info.zca,
        hflip=info.hflip,
        cache=cache,
        resume=cfg.resume or bool(cfg.ckpt_path),  # a --ckpt_path resumes from it
        ckpt_path=cfg.ckpt_path or os.path.join(result, 'checkpoints'),
        # --cpu_replicas mirrors over CPU devices
        device='cpu' if cfg.cpu_replicas and cfg.device == 'auto' else cfg.device,
        **folders,
    )
    checks.check(cfg)
    return cfg


_NAMES = frozenset(f.name for f in FIELDS)


def to_json(cfg: RunConfig) -> Dict[str, Any]:
    """``args.json``: every field, flat, by its flag's name."""
    return dataclasses.asdict(cfg)


def from_json(saved: Dict[str, Any]) -> RunConfig:
    """The configuration an ``args.json`` holds: unknown keys are ignored and missing
    ones take their defaults (what runs saved before a field existed ran with)."""
    return RunConfig(**{k: v for k, v in saved.items() if k in _NAMES})


def defined_by_flags() -> Tuple[str, ...]:
    """The run-defining settings that the flags fix before TensorFlow loads."""
    return tuple(k for k in RUN_DEFINING if k not in RESOLVED_LATER)
