"""What the training process sets before TensorFlow loads, which TensorFlow reads
once, at start-up. Imports no TensorFlow."""

import importlib.util
import os


def prepare(cfg) -> None:
    """Sets the environment TensorFlow reads when it loads, from the run's config:
    ``CUDA_VISIBLE_DEVICES`` for ``--gpu_id``, and for ``--xla=on`` under TF 1.15
    ``--tf_xla_cpu_global_jit`` in TF_XLA_FLAGS, without which TF 1.15 applies the
    session's JIT level (``sesemi_tf.execution.configure``) to no CPU op. TF 1.15
    is the release that ships a ``tensorflow_core`` package."""
    if cfg.gpu_id is not None:
        os.environ['CUDA_VISIBLE_DEVICES'] = cfg.gpu_id
    if cfg.xla == 'on' and importlib.util.find_spec('tensorflow_core') is not None:
        present = os.environ.get('TF_XLA_FLAGS', '')
        if '--tf_xla_cpu_global_jit' not in present:
            os.environ['TF_XLA_FLAGS'] = (present + ' --tf_xla_cpu_global_jit').strip()
