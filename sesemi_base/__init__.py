"""The bottom layer: what the method (``utils``), the datasets and the networks need.

- ``errors``: ``UsageError``, bad flags or bad input, reported in one line.
- ``files``: writes that readers see whole or not at all, and the metrics log.
- ``console``: what reaches the console while TensorFlow loads (``--verbose``).
- ``compat``: TensorFlow and Keras, and the one place where TF 1.15 and TF 2.x differ.

Only ``compat`` imports TensorFlow; the others are plain Python.
"""
