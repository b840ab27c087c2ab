"""How the training step is executed: XLA compilation and steps per execution.

    flag                   TF 2.x (CPU/GPU)                TF 1.15 (CPU/GPU)         NPU
    --xla                  compile(jit_compile=...)         session global JIT level  always off
    --steps_per_execution  compile(steps_per_execution=N)   1 (no such option)        1

Under --distribute=mirrored and multi_worker (TF 2.x) --steps_per_execution is
the same compile argument (each call runs N steps on every replica; the workers
of a multi-worker job vote on stopping once per call) and --xla=on is refused
(``sesemi_tf.checks``); --distribute=npu follows the NPU column.

``auto`` picks what measured faster on this project's CPU (docs/performance.md):
XLA off (under TF 2.x its CPU convolutions run at half the speed of oneDNN's;
under TF 1.15 it shortened the step by 5 % at width 1/8, not more than the 5 %
the rule asked for; GPUs were not measured), and up to
``AUTO_STEPS_PER_EXECUTION`` steps per call of the training function on TF 2.x.
The debugging aids that look at every step (--over_dump, --data_dump_flag,
--profiling) need one step per execution and no XLA: ``auto`` gives them that,
and an explicit setting against them is refused.

The flags are checked before TensorFlow loads (``sesemi_tf.checks``), and
``sesemi_tf.startup`` sets TF 1.15's XLA environment then; ``configure`` runs
after ``sesemi_tf.device.configure``, once the epoch length is known, and
``compile_options`` gives the compile arguments.
"""

import dataclasses
import math
from typing import Dict

from sesemi_base.compat import TF1, K, tf
from sesemi_base.errors import UsageError
from sesemi_tf.checks import STEP_INTERVALS, debug_aids
from sesemi_tf.config import AUTO_STEPS_PER_EXECUTION


def resolve(cfg, device: str, tf1: bool, steps_per_epoch: int) -> Dict[str, object]:
    """The XLA and steps-per-execution settings in effect.

    Keras runs an epoch's steps in executions of ``steps_per_execution``,
    the last one cut at the epoch's end. Checkpoints (every --ckpt_every_steps)
    and evaluations (every --eval_every_steps) happen between executions, so the
    executions must end on those steps: auto takes the largest count up to
    ``AUTO_STEPS_PER_EXECUTION`` that divides the epoch and both intervals; an
    explicit count must divide them.

    Args:
        cfg: the flags (``xla``, ``steps_per_execution``, ``ckpt_every_steps``,
            ``eval_every_steps`` and the debugging aids).
        device: the device in use: cpu, gpu or npu.
        tf1: whether TensorFlow 1.15 runs.
        steps_per_epoch: training steps of one epoch.

    Returns:
        {'xla': 'on' or 'off', 'steps_per_execution': N}.

    Raises:
        UsageError: --xla=on on an NPU or, under TF 2.x, with --deterministic;
            --steps_per_execution above 1 where there is no such option (TF 1.15,
            NPU) or not dividing the epoch.
    """
    if device == 'npu' and cfg.xla == 'on':
        raise UsageError(
            '--xla=on is not available on an NPU (the CANN adapter compiles the '
            'graph itself); leave --xla at auto'
        )
    if cfg.xla == 'on' and cfg.deterministic and not tf1:
        raise UsageError(
            '--xla=on cannot be used with --deterministic under TensorFlow 2 (its '
            'deterministic mode has no XLA max-pooling gradient); drop one of them'
        )
    asked = cfg.steps_per_execution
    if (tf1 or device == 'npu') and asked > 1:
        raise UsageError(
            '--steps_per_execution=%d needs TensorFlow 2 on CPU or GPU (Keras runs '
            'one step per call here); leave it at 0 (auto)' % asked
        )
    if asked > 1 and steps_per_epoch % asked:
        raise UsageError(
            '--steps_per_execution=%d does not divide the %d steps of an epoch; '
            'choose a divisor of %d, or 0 (auto)' % (asked, steps_per_epoch, steps_per_epoch)
        )
    per_call = asked
    if not per_call:
        per_call = 1 if tf1 or device == 'npu' or debug_aids(cfg) else AUTO_STEPS_PER_EXECUTION
        per_call = math.gcd(per_call, steps_per_epoch)
        for name, _ in STEP_INTERVALS:
            if getattr(cfg, name):
                per_call = math.gcd(per_call, getattr(cfg, name))
    return {'xla': 'on' if cfg.xla == 'on' else 'off', 'steps_per_execution': per_call}


def compile_options(cfg) -> Dict[str, object]:
    """The extra ``model.compile`` arguments for the settings in effect (TF 2.x);
    none on TF 1.15, where XLA is a session setting."""
    if TF1:
        return {}
    return {'jit_compile': cfg.xla == 'on', 'steps_per_execution': cfg.steps_per_execution}


def configure(cfg, steps_per_epoch: int):
    """Resolves the settings (see ``resolve``) for the device in use and applies
    those that are not compile arguments: TF 1.15's session JIT level. Call after
    ``sesemi_tf.device.configure`` and before the model is built.

    Returns:
        ``cfg`` with the XLA and steps-per-execution settings in effect.
    """
    settings = resolve(cfg, cfg.device, TF1, steps_per_epoch)
    if TF1 and settings['xla'] == 'on':
        # Keeps what the session made so far was configured with (threads, rewrites).
        config = tf.compat.v1.ConfigProto()
        config.CopyFrom(getattr(K.get_session(), '_config', None) or config)
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
        tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))
    return dataclasses.replace(cfg, **settings)
