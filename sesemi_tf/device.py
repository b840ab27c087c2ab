"""Where training runs (CPU, GPU or Ascend NPU) and in which precision.

``configure`` resolves ``--device`` and ``--precision_mode`` once TensorFlow has
loaded and sets the device up before the model is built: on an NPU the Ascend
adapter's session or device options (``sesemi_tf.npu``); on CPU and GPU the
Keras mixed-precision policy (TF 2), the float16 graph rewrite (TF 1.15 GPU) and
TF 2's numeric checking for ``--over_dump``. ``optimizer_wrapper`` adds the loss
scaling that the precision in effect needs; ``describe`` says what was set up,
for ``--dry_run``. The flags are checked before TensorFlow loads, in
``sesemi_tf.checks``.
"""

import dataclasses
import os
import sys
from typing import Callable, Optional, Tuple

from sesemi_base.compat import TF1, keras, tf
from sesemi_base.errors import UsageError
from sesemi_tf import npu
from sesemi_tf.checks import (
    MIXED_MODES,
    NPU_DEFAULT_PRECISION,
    PROFILE_SKIP_STEPS,
    PROFILE_STEPS,
    missing_adapter_text,
)
from sesemi_tf.debug import OVERFLOW_REPORT


def resolve_precision(device: str, precision_mode: str, tf1: bool) -> str:
    """The precision actually used: an NPU precision mode, or a Keras dtype policy.

    On CPU/GPU the modes that allow 16-bit compute become mixed precision:
    bfloat16 on CPU (no loss scaling needed), float16 on GPU (with loss
    scaling). TF 1.15 has only the GPU float16 graph rewrite, so its CPU runs
    stay in float32.
    """
    if device == 'npu':
        return precision_mode or NPU_DEFAULT_PRECISION
    if precision_mode not in MIXED_MODES:
        return 'float32'
    if device == 'gpu':
        return 'mixed_float16'
    return 'float32' if tf1 else 'mixed_bfloat16'


def bfloat16_is_native() -> bool:
    """Whether oneDNN computes bfloat16 with this CPU's own instructions (AVX-512
    BF16, AMX, or their ARM counterparts), as TensorFlow itself decides it; False
    where TensorFlow cannot tell (it then emulates bfloat16 slowly)."""
    try:
        from tensorflow.python.util import _pywrap_utils

        return bool(
            _pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(tf.bfloat16.as_datatype_enum)
        )
    except (ImportError, AttributeError):
        return False


def _select_device(cfg) -> Tuple[str, Optional[object]]:
    """Resolves --device; returns (device, adapter module or None)."""
    if cfg.device in ('auto', 'npu'):
        adapter, why = npu.import_adapter()
        if adapter is not None:
            return 'npu', adapter
        if cfg.device == 'npu':
            if cfg.dry_run:
                return 'npu', None
            raise UsageError(missing_adapter_text(why))
    gpus = tf.config.experimental.list_physical_devices('GPU')
    if cfg.device == 'gpu' and not gpus:
        raise UsageError(
            '--device=gpu but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES=%s); use '
            '--device=cpu or auto' % os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')
        )
    return ('gpu' if gpus else 'cpu') if cfg.device == 'auto' else cfg.device, None


def configure(cfg):
    """Sets up the device before the model is built.

    NPU: the adapter's session (TF 1.15) or device options (TF 2). CPU/GPU: the
    Keras mixed-precision policy (TF 2), the float16 graph rewrite (TF 1.15 GPU),
    and TF 2's numeric checking for --over_dump.

    Returns:
        ``cfg`` with the device in use (cpu, gpu or npu) and the precision in
        effect (a Keras policy: float32, mixed_bfloat16, mixed_float16; or the
        NPU's precision mode).

    Raises:
        UsageError: --device=npu without the adapter (except in a --dry_run),
            --device=gpu without a GPU.
    """
    device, adapter = _select_device(cfg)
    precision = resolve_precision(device, cfg.precision_mode, TF1)
    resolved = dataclasses.replace(cfg, device=device, precision=precision)
    if device == 'npu':
        if adapter is not None and TF1:
            _set_tf1_session(npu.npu_session_config(resolved))
        elif adapter is not None:
            npu.open_npu(adapter, npu.npu_options(resolved))
        return resolved
    if precision != 'float32' and TF1:  # TF 1.15 GPU: sessions made from now on rewrite to float16
        config = tf.compat.v1.ConfigProto()
        config.graph_options.rewrite_options.auto_mixed_precision = npu.rewriter_config().ON
        _set_tf1_session(config, cfg.deterministic)
    elif precision != 'float32':
        if precision == 'mixed_bfloat16' and not bfloat16_is_native():
            print(
                'warning: this CPU has no bfloat16 instructions that oneDNN uses, so '
                'mixed_bfloat16 is emulated and can be many times slower than float32; '
                'leave --precision_mode empty for float32',
                file=sys.stderr,
            )
        keras.mixed_precision.set_global_policy(precision)
    elif cfg.precision_mode in MIXED_MODES:
        print(
            'warning: --precision_mode=%s trains in float32 here: TensorFlow 1.15 has mixed '
            'precision on GPU only (the Keras mixed-precision policy needs TF 2)'
            % cfg.precision_mode,
            file=sys.stderr,
        )
    if cfg.over_dump and not TF1:
        # Instruments every op created from now on, the training step included.
        tf.debugging.enable_check_numerics()
    return resolved


def _set_tf1_session(config, deterministic: bool = False) -> None:
    """Makes Keras (TF 1.15) use a new session with ``config``."""
    if deterministic:  # this session replaces the one of compat.make_deterministic
        config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = 1
    tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))


def optimizer_wrapper(cfg, all_reduce: Optional[Callable] = None) -> Optional[Callable]:
    """What to wrap the SGD optimizer in, for the precision in effect (after
    ``configure``); None when it is used as it is.

    TF 2 GPU float16 needs nothing: Keras' compile adds dynamic loss scaling
    under the mixed_float16 policy by itself; bfloat16 needs no loss scaling.
    A --dry_run compiles nothing that trains, and may lack the adapter.

    Args:
        cfg: the flags, with the device and precision in effect.
        all_reduce: on an NPU with several ranks, the adapter's gradient
            all-reduce around an optimizer (``parallel.DataParallel``). Under
            allow_mix_precision it goes inside the loss-scale optimizer, whose
            distributed option makes every rank skip an overflowing step together.
    """
    if cfg.dry_run:
        return None
    if cfg.device == 'npu' and cfg.precision == 'allow_mix_precision':
        scale = npu.loss_scale_tf1 if TF1 else npu.loss_scale_tf2
        return lambda optimizer: scale(optimizer, all_reduce)
    if all_reduce is not None:
        return all_reduce
    if cfg.device == 'gpu' and cfg.precision == 'mixed_float16' and TF1:
        # Wraps the optimizer in Keras' dynamic loss scaling and turns on the
        # float16 graph rewrite for sessions created later (configure made one
        # with the rewrite on already).
        return tf.compat.v1.train.experimental.enable_mixed_precision_graph_rewrite
    return None


def describe(cfg) -> str:
    """What ``configure`` set up and the debugging aids in use, for --dry_run."""
    lines = ['Device: %s, precision: %s' % (cfg.device, cfg.precision)]
    if cfg.device == 'npu':
        adapter, why = npu.import_adapter()
        if adapter is None:
            lines.append(
                'Ascend adapter missing (%s): a real run stops here with exit code 2' % why
            )
        if TF1:
            lines.append('NPU session config (tf.compat.v1.ConfigProto):')
            lines.append(str(npu.npu_session_config(cfg)).rstrip())
        else:
            lines.append('NPU options (npu_device.global_options(), then npu.open().as_default()):')
            lines += ['  %s = %r' % option for option in npu.npu_options(cfg)]
        return '\n'.join(lines)
    lines.append(
        'Overflow check: %s'
        % (
            'on, report in %s' % os.path.join(cfg.over_dump_path, OVERFLOW_REPORT)
            if cfg.over_dump
            else 'off'
        )
    )
    lines.append(
        'Data dump: %s'
        % (
            'steps %s into %s' % (cfg.data_dump_step, cfg.data_dump_path)
            if cfg.data_dump_flag
            else 'off'
        )
    )
    lines.append(
        'Profiling: %s'
        % (
            '%d steps after the first %d, into %s'
            % (PROFILE_STEPS, PROFILE_SKIP_STEPS, cfg.profiling_path)
            if cfg.profiling
            else 'off'
        )
    )
    return '\n'.join(lines)
