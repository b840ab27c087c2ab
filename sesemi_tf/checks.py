"""Checks of the flags that can be made before TensorFlow loads: settings that
cannot hold together, malformed values, folders that cannot be written, an
Ascend adapter or a cluster description that is missing. Each failure is one
``UsageError`` line saying what to do.

Imports no TensorFlow, so that bad input costs one line on stderr and nothing else.
"""

import importlib.util
import json
import os
import re
from typing import List, Optional, Tuple

from sesemi_base.errors import UsageError

PRECISION_MODES = (
    'allow_fp32_to_fp16',
    'force_fp16',
    'force_fp32',
    'cube_fp16in_fp32out',
    'must_keep_origin_dtype',
    'allow_mix_precision',
)
NPU_DEFAULT_PRECISION = 'allow_fp32_to_fp16'  # the Ascend 910 default
# Modes that let the device compute in 16 bits: mixed precision on CPU/GPU.
MIXED_MODES = ('allow_mix_precision', 'allow_fp32_to_fp16', 'force_fp16')
# The CANN adapter's module per TensorFlow generation (TF 1.15: the session-config
# bridge, whose npu_init registers the NpuOptimizer graph pass; TF 2.x: the device).
ADAPTER = {1: 'npu_bridge.npu_init', 2: 'npu_device'}
PROFILE_SKIP_STEPS = 1  # the first step of a run builds graphs and kernels: not representative
PROFILE_STEPS = 3
DEBUG_AIDS = ('over_dump', 'data_dump_flag', 'profiling')
# Flags of actions taken every N steps, which must fall between executions.
STEP_INTERVALS = (
    ('ckpt_every_steps', 'checkpoints are written'),
    ('eval_every_steps', 'the test set is evaluated'),
)
LAUNCHER = 'test/train_multi_worker.sh'


def check(cfg) -> None:
    """Every check of a ``config.RunConfig`` that needs no TensorFlow.

    Raises:
        UsageError: the first setting found that cannot be used.
    """
    check_parallel(cfg)
    check_device(cfg)
    check_execution(cfg)


# ------------------------------------------------------------ device and aids


def parse_dump_steps(text: str) -> List[int]:
    """The steps of a --data_dump_step value such as ``0|3-5|10``, sorted.

    Raises:
        UsageError: malformed text or a decreasing range.
    """
    steps = set()
    for part in text.split('|'):
        match = re.match(r'^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$', part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise UsageError(
                '--data_dump_step=%r is malformed; give steps counted from 0, joined by |, with '
                'a-b for ranges (e.g. 0|3-5|10)' % text
            )
        first = int(match.group(1))
        steps.update(range(first, int(match.group(2) or first) + 1))
    return sorted(steps)


def _check_folder(path: str, flag: str, create: bool) -> None:
    """Makes sure folder ``path`` exists and is writable (``create``), or could be."""
    if create:
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(13, 'not writable')
            return
        except OSError as err:
            reason = err.strerror or str(err)
    else:  # --dry_run writes nothing: only check that the nearest existing parent allows it
        parent = os.path.abspath(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if os.path.isdir(parent) and os.access(parent, os.W_OK):
            return
        reason = '%s is not a writable folder' % parent
    raise UsageError('cannot create --%s=%s (%s); pass a writable folder' % (flag, path, reason))


def check_device(cfg) -> None:
    """Validates the device flags and creates the folders of the debugging aids in use.

    Raises:
        UsageError: unknown precision mode, both dumps on, a malformed
            --data_dump_step, a folder that cannot be created, or --device=npu
            without an Ascend adapter (a --dry_run only reports the latter).
    """
    if cfg.precision_mode and cfg.precision_mode not in PRECISION_MODES:
        raise UsageError(
            'unknown --precision_mode=%s; choose one of: %s (or leave it empty for the device '
            'default)' % (cfg.precision_mode, ', '.join(PRECISION_MODES))
        )
    if cfg.over_dump and cfg.data_dump_flag:
        raise UsageError(
            '--over_dump and --data_dump_flag cannot both be on (the Ascend adapter refuses '
            'enable_dump with enable_dump_debug); run them one at a time'
        )
    parse_dump_steps(cfg.data_dump_step)
    for switch, key in (
        ('over_dump', 'over_dump_path'),
        ('data_dump_flag', 'data_dump_path'),
        ('profiling', 'profiling_path'),
    ):
        if getattr(cfg, switch):
            _check_folder(getattr(cfg, key), key, create=not cfg.dry_run)
    if cfg.device == 'npu' and not cfg.dry_run and not adapter_installed():
        raise UsageError(missing_adapter_text())


def adapter_installed() -> bool:
    """Whether an Ascend adapter is installed. ``find_spec`` locates a top-level
    package without running it (the adapters import TensorFlow)."""
    return any(importlib.util.find_spec(name.split('.')[0]) for name in ADAPTER.values())


def missing_adapter_text(detail: str = '') -> str:
    """The one line that says --device=npu cannot run here (``detail``: why)."""
    return (
        '--device=npu needs the Ascend CANN TensorFlow adapter (npu_bridge for TF 1.15, '
        'npu_device for TF 2), which does not import here%s; install CANN and its adapter, or '
        'use --device=cpu/gpu/auto' % (' (%s)' % detail if detail else '')
    )


# ------------------------------------------------------------------ execution


def debug_aids(cfg) -> List[str]:
    """The debugging aids on, as flags."""
    return ['--' + name for name in DEBUG_AIDS if getattr(cfg, name)]


def check_execution(cfg) -> None:
    """Refuses execution settings that cannot hold together.

    Raises:
        UsageError: XLA or several steps per execution asked for together with a
            debugging aid that needs every step; --ckpt_every_steps or
            --eval_every_steps not a multiple of --steps_per_execution.
    """
    aids = debug_aids(cfg)
    if aids and cfg.xla == 'on':
        raise UsageError(
            '--xla=on cannot be used with %s, which watch every op of every step; leave --xla '
            'at auto' % ', '.join(aids)
        )
    if aids and cfg.steps_per_execution > 1:
        raise UsageError(
            '--steps_per_execution=%d cannot be used with %s, which need one step per '
            'execution; leave it at 0 (auto)' % (cfg.steps_per_execution, ', '.join(aids))
        )
    per_call = cfg.steps_per_execution
    for name, what in STEP_INTERVALS:
        every = getattr(cfg, name)
        if every and per_call > 1 and every % per_call:
            raise UsageError(
                '--%s=%d is not a multiple of --steps_per_execution=%d (%s between executions); '
                'change one of them' % (name, every, per_call, what)
            )


# ----------------------------------------------------------- data parallelism


def tf1_installed() -> bool:
    """Whether the installed TensorFlow is 1.15, found without importing it (only
    that release ships a ``tensorflow_core`` package)."""
    return importlib.util.find_spec('tensorflow_core') is not None


def npu_rank() -> Tuple[int, int]:
    """(RANK_ID, RANK_SIZE) of this process, as the 8p launch scripts set them.

    Raises:
        UsageError: not integers, or RANK_ID outside 0..RANK_SIZE−1.
    """
    texts = os.environ.get('RANK_ID', '0'), os.environ.get('RANK_SIZE', '1')
    try:
        rank, size = int(texts[0]), int(texts[1])
    except ValueError:
        rank = size = -1
    if size < 1 or not 0 <= rank < size:
        raise UsageError(
            '--distribute=npu needs RANK_ID in 0..RANK_SIZE-1 and RANK_SIZE >= 1 in the '
            'environment (got RANK_ID=%r, RANK_SIZE=%r); start it with test/train_full_8p.sh'
            % texts
        )
    return rank, size


def cluster_task() -> Tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG, which
    MultiWorkerMirroredStrategy reads too.

    Raises:
        UsageError: TF_CONFIG missing, not JSON, or without a worker list and
            this process's worker task in it.
    """
    text = os.environ.get('TF_CONFIG', '')
    try:
        config = json.loads(text)
        workers, task = config['cluster']['worker'], config['task']
        index = task['index']
        ok = (
            isinstance(workers, list)
            and workers
            and task.get('type') == 'worker'
            and isinstance(index, int)
            and not isinstance(index, bool)
            and 0 <= index < len(workers)
            and set(config['cluster']) == {'worker'}
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise UsageError(
            '--distribute=multi_worker needs TF_CONFIG in the environment, e.g. {"cluster": '
            '{"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}} '
            '(workers only; index 0 is the chief); got %s; start local workers with %s'
            % (text and repr(text) or 'none', LAUNCHER)
        )
    return index, len(workers)


def known_replicas(cfg) -> Optional[int]:
    """The number of replicas when the flags and environment fix it (None for
    GPUs, counted once TensorFlow runs)."""
    if cfg.distribute == 'none':
        return 1
    if cfg.distribute == 'npu':
        return npu_rank()[1]
    if cfg.distribute == 'multi_worker':
        return cluster_task()[1] if cfg.device == 'cpu' else None
    return cfg.cpu_replicas or None


def check_parallel(cfg) -> None:
    """Refuses data-parallel settings that cannot hold together.

    Raises:
        UsageError: a strategy without its device or TensorFlow generation, a
            flag that needs a strategy without one, --batch_size not divisible
            by the number of replicas.
    """
    kind = cfg.distribute
    if kind == 'npu' and cfg.device != 'npu':
        raise UsageError(
            '--distribute=npu needs --device=npu (the HCCL collectives of the Ascend adapter); '
            'use --distribute=mirrored on CPU/GPU'
        )
    strategy = kind in ('mirrored', 'multi_worker')  # tf.distribute's
    if strategy and cfg.device == 'npu':
        raise UsageError('--distribute=%s does not run on an NPU; use --distribute=npu' % kind)
    if strategy and tf1_installed():
        raise UsageError(
            "--distribute=%s needs TensorFlow 2 (.venv): TensorFlow 1.15's Keras cannot train "
            'this model under a distribution strategy' % kind
        )
    if strategy and cfg.xla == 'on':
        raise UsageError(
            '--xla=on is not available with --distribute=%s (the gradient all-reduce would have '
            'to run inside the compiled step, which this project has not verified); leave --xla '
            'at auto' % kind
        )
    if kind == 'multi_worker':
        cluster_task()
    if cfg.cpu_replicas and kind != 'mirrored':
        raise UsageError('--cpu_replicas=%d needs --distribute=mirrored' % cfg.cpu_replicas)
    if cfg.cpu_replicas and cfg.device != 'cpu':
        raise UsageError(
            '--cpu_replicas mirrors over CPU devices; it cannot be used with --device=%s'
            % cfg.device
        )
    if cfg.sync_bn and kind == 'none':
        raise UsageError(
            '--sync_bn needs --distribute=mirrored or multi_worker (one device has global '
            'statistics already)'
        )
    if cfg.sync_bn and kind == 'npu':
        raise UsageError(
            '--sync_bn is not available with --distribute=npu (the Ascend adapter has no '
            'synchronised BatchNorm); drop it to use per-device statistics'
        )
    if cfg.scale_batch and kind == 'none':
        raise UsageError(
            '--scale_batch needs --distribute (it multiplies the batch by the number of replicas)'
        )
    replicas = known_replicas(cfg)
    if replicas:
        check_batch(cfg, replicas)


def check_batch(cfg, replicas: int) -> None:
    """Raises UsageError when --batch_size cannot be split into ``replicas`` equal slices."""
    if not cfg.scale_batch and cfg.batch_size % replicas:
        raise UsageError(
            '--batch_size=%d cannot be split across %d replicas; use a multiple of %d, or '
            '--scale_batch to give each replica %d images'
            % (cfg.batch_size, replicas, replicas, cfg.batch_size)
        )
