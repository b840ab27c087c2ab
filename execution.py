"""How the training step is executed: XLA compilation and steps per execution.

    flag                   TF 2.x (CPU/GPU)                TF 1.15 (CPU/GPU)         NPU
    --xla                  compile(jit_compile=...)         session global JIT level  always off
    --steps_per_execution  compile(steps_per_execution=N)   1 (no such option)        1

Under --distribute=mirrored and multi_worker (TF 2.x) --steps_per_execution is
the same compile argument (each call runs N steps on every replica; the workers
of a multi-worker job vote on stopping once per call) and --xla=on is refused
(distribute.check_flags); --distribute=npu follows the NPU column.

``auto`` picks what measured faster on this project's CPU (docs/performance.md):
XLA off (under TF 2.x its CPU convolutions run at half the speed of oneDNN's;
under TF 1.15 it shortened the step by 5 % at width 1/8, not more than the 5 %
the rule asked for; GPUs were not measured), and up to
``AUTO_STEPS_PER_EXECUTION`` steps per call of the training function on TF 2.x.
The debugging aids that look at every step (--over_dump, --data_dump_flag,
--profiling) need one step per execution and no XLA: ``auto`` gives them that,
and an explicit setting against them is refused.

The entry calls ``define_flags``, ``check_flags`` and ``prepare_environment``
(before TensorFlow loads), ``configure`` (after ``device.configure``, once the
epoch length is known) and ``compile_options``.
"""

import math
from typing import Dict

from absl import flags

from utils import UsageError

XLA_CHOICES = ('auto', 'on', 'off')
# Steps per call of the TF 2 training function when left to auto: enough to take
# the per-call host work (callbacks, logs, iterator) off most steps, few enough
# that a SIGTERM or a non-finite loss is seen within a few seconds of it.
AUTO_STEPS_PER_EXECUTION = 8
DEBUG_AIDS = ('over_dump', 'data_dump_flag', 'profiling')
# Flags of actions taken every N steps, which must fall between executions.
STEP_INTERVALS = (
    ('ckpt_every_steps', 'checkpoints are written'),
    ('eval_every_steps', 'the test set is evaluated'),
)


def define_flags(fv: flags.FlagValues) -> None:
    """Defines --xla and --steps_per_execution on ``fv``."""
    flags.DEFINE_enum(
        'xla',
        'auto',
        XLA_CHOICES,
        'Compile the training step and evaluation with '
        'XLA. auto (default): off, what measured faster on CPU; refused on an NPU and '
        'with the debugging aids.',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'steps_per_execution',
        0,
        'Training steps per call of the compiled '
        'training function (TF 2.x; callbacks, NaN checks and SIGTERM are seen '
        'between calls). 0 (default): %d, or 1 while a debugging aid is on, and on '
        'TF 1.15 and NPU.' % AUTO_STEPS_PER_EXECUTION,
        lower_bound=0,
        flag_values=fv,
    )


def _debug_aids(cfg: dict) -> list:
    return ['--' + name for name in DEBUG_AIDS if cfg.get(name)]


def check_flags(cfg: dict) -> None:
    """Refuses settings that cannot hold together. Imports no TensorFlow.

    Raises:
        UsageError: XLA or several steps per execution asked for together with a
            debugging aid that needs every step; --ckpt_every_steps or
            --eval_every_steps not a multiple of --steps_per_execution.
    """
    aids = _debug_aids(cfg)
    if aids and cfg['xla'] == 'on':
        raise UsageError(
            '--xla=on cannot be used with %s, which watch every op of every step; '
            'leave --xla at auto' % ', '.join(aids)
        )
    if aids and cfg['steps_per_execution'] > 1:
        raise UsageError(
            '--steps_per_execution=%d cannot be used with %s, which need one step '
            'per execution; leave it at 0 (auto)' % (cfg['steps_per_execution'], ', '.join(aids))
        )
    per_call = cfg['steps_per_execution']
    for name, what in STEP_INTERVALS:
        every = cfg.get(name) or 0
        if every and per_call > 1 and every % per_call:
            raise UsageError(
                '--%s=%d is not a multiple of --steps_per_execution=%d (%s between '
                'executions); change one of them' % (name, every, per_call, what)
            )


def prepare_environment(cfg: dict) -> None:
    """Sets what TensorFlow reads once, at start-up; call before it is imported.

    TF 1.15 (the release that ships a ``tensorflow_core`` package) applies the
    session's JIT level to CPU ops only with ``--tf_xla_cpu_global_jit`` in
    TF_XLA_FLAGS. The flag alone compiles nothing: ``configure`` sets the JIT
    level.
    """
    import importlib.util
    import os

    if cfg['xla'] == 'on' and importlib.util.find_spec('tensorflow_core') is not None:
        present = os.environ.get('TF_XLA_FLAGS', '')
        if '--tf_xla_cpu_global_jit' not in present:
            os.environ['TF_XLA_FLAGS'] = (present + ' --tf_xla_cpu_global_jit').strip()


def resolve(cfg: dict, device: str, tf1: bool, steps_per_epoch: int) -> Dict[str, object]:
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
    if device == 'npu' and cfg['xla'] == 'on':
        raise UsageError(
            '--xla=on is not available on an NPU (the CANN adapter compiles the '
            'graph itself); leave --xla at auto'
        )
    if cfg['xla'] == 'on' and cfg.get('deterministic') and not tf1:
        raise UsageError(
            '--xla=on cannot be used with --deterministic under TensorFlow 2 (its '
            'deterministic mode has no XLA max-pooling gradient); drop one of them'
        )
    asked = cfg['steps_per_execution']
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
        per_call = 1 if tf1 or device == 'npu' or _debug_aids(cfg) else AUTO_STEPS_PER_EXECUTION
        per_call = math.gcd(per_call, steps_per_epoch)
        for name, _ in STEP_INTERVALS:
            if cfg.get(name):
                per_call = math.gcd(per_call, cfg[name])
    return {'xla': 'on' if cfg['xla'] == 'on' else 'off', 'steps_per_execution': per_call}


def compile_options(cfg: dict) -> Dict[str, object]:
    """The extra ``model.compile`` arguments for the settings in effect (TF 2.x);
    none on TF 1.15, where XLA is a session setting."""
    from compat import TF1

    if TF1:
        return {}
    return {'jit_compile': cfg['xla'] == 'on', 'steps_per_execution': cfg['steps_per_execution']}


def configure(cfg: dict, device: str, steps_per_epoch: int) -> Dict[str, object]:
    """Resolves the settings (see ``resolve``) and applies those that are not
    compile arguments: TF 1.15's session JIT level. Call after ``device.configure``
    and before the model is built.

    Returns:
        {'xla': 'on'/'off', 'steps_per_execution': N}, for the run's configuration.
    """
    from compat import TF1, K, tf

    settings = resolve(cfg, device, TF1, steps_per_epoch)
    if TF1 and settings['xla'] == 'on':
        # Keeps what the session made so far was configured with (threads, rewrites).
        config = tf.compat.v1.ConfigProto()
        config.CopyFrom(getattr(K.get_session(), '_config', None) or config)
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
        tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))
    return settings
