"""The debugging aids of the ModelZoo flags on CPU and GPU, as Keras callbacks:
``--over_dump`` stops at the first Inf/NaN and reports the op that made it,
``--data_dump_flag`` dumps every tensor of chosen steps, ``--profiling`` records
a profiler trace. On an NPU the Ascend adapter does these jobs itself, from the
options ``sesemi_tf.device.configure`` gave it.
"""

import os
import re
import sys
from typing import List, Optional, Tuple

import numpy as np

from sesemi_base.compat import TF1, K, keras, tf, to_float
from sesemi_tf.checks import PROFILE_SKIP_STEPS, PROFILE_STEPS, parse_dump_steps

OVERFLOW_EXIT_CODE = 3  # as the entry's own stop on a non-finite loss
OVERFLOW_REPORT = 'overflow_report.txt'
REPORT_TENSORS = 50  # non-finite tensors listed in the TF 1.15 overflow report


def callbacks(cfg) -> list:
    """The Keras callbacks of --over_dump, --data_dump_flag and --profiling on
    CPU/GPU (after ``configure``). On an NPU the adapter does these jobs itself,
    from the options ``configure`` gave it."""
    if cfg.device == 'npu':
        return []
    found = []
    if cfg.over_dump:
        found.append(_overflow_check(cfg.over_dump_path))
    if cfg.data_dump_flag:
        found.append(_data_dump(cfg.data_dump_path, parse_dump_steps(cfg.data_dump_step)))
    if cfg.profiling:
        found.append(_profiler(cfg.profiling_path))
    return found


def _step(model) -> int:
    """The training step about to run (or just run): the optimizer's counter."""
    return int(to_float(model.optimizer.iterations))


def _tf1_run_with(model, options=None, run_metadata=None, compiled=None):
    """Makes Keras' TF 1.15 training function run with ``options`` (RunOptions)
    from its next call on, filling ``run_metadata``.

    The function compiles its options into a cached session callable, which
    takes seconds to build for this model. Returns the callable in use until
    now; pass it back as ``compiled`` when going back to its options.
    """
    # pylint: disable=protected-access
    function = model.train_function
    previous = function._callable_fn
    function.run_options, function.run_metadata = options, run_metadata
    function._callable_fn = compiled  # None: rebuilt with ``options`` at the next call
    return previous


def _tf1_watch_everything(debug_op: str, folder: str, dtypes: Optional[str] = None):
    """RunOptions that make TF 1.15's debugger apply ``debug_op`` to every tensor
    (of the dtypes matching the regex ``dtypes``) and write into ``folder``."""
    from tensorflow.python import debug as tf_debug

    options = tf.compat.v1.RunOptions()
    tf_debug.watch_graph(
        options,
        K.get_session().graph,
        debug_ops=[debug_op],
        debug_urls=['file://' + os.path.abspath(folder)],
        tensor_dtype_regex_whitelist=dtypes,
    )
    return options


def _overflow_check(folder: str):
    """A callback that stops training at the first Inf/NaN and reports the op
    that produced it in ``folder``/overflow_report.txt."""

    class OverflowCheck(keras.callbacks.Callback):
        step = 0

        def on_train_batch_begin(self, batch, logs=None):
            self.step = _step(self.model)

        def stop(self, op_name: str, op_type: str, details: str) -> None:
            """Writes the report, then ends the process like the entry's own
            stop on a non-finite loss: one line on stderr, exit code 3."""
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, OVERFLOW_REPORT)
            with open(path, 'w') as f:
                f.write(
                    'First Inf/NaN in training step %d\nop: %s\nop type: %s\n\n%s\n'
                    % (self.step, op_name, op_type, details)
                )
            sys.stdout.flush()
            print(
                'error: the first Inf/NaN came from op %s (%s) at step %d, see %s; lower '
                '--base_lr or check the input data' % (op_name, op_type, self.step, path),
                file=sys.stderr,
            )
            raise SystemExit(OVERFLOW_EXIT_CODE)

        def on_train_batch_end(self, batch, logs=None):
            # An optimizer update has no output tensor for the checks to see: an
            # update that makes a weight non-finite shows up here.
            weights = self.model.weights
            for weight, value in zip(weights, K.batch_get_value(weights)):
                if not np.all(np.isfinite(value)):
                    op_name, op_type = _update_op(weight, self.model.optimizer)
                    self.stop(
                        op_name,
                        op_type,
                        'Weight %s holds Inf/NaN after the update of this '
                        'step (no tensor computed in the step did).' % weight.name,
                    )

    class CheckNumerics(OverflowCheck):
        """TF 2: every op traced after ``configure`` carries a numeric check
        (tf.debugging.enable_check_numerics), which raises at the first op whose
        output holds an Inf or NaN; this turns that error into the report."""

        def on_train_begin(self, logs=None):
            train = self.model.train_function
            if getattr(train, 'overflow_checked', False):  # wrapped by an earlier fit
                return

            def checked(iterator):
                try:
                    return train(iterator)
                except tf.errors.InvalidArgumentError as err:
                    if 'Detected Infinity or NaN' not in err.message:
                        raise
                    node = re.search(r"node '?([^\s']+?)/CheckNumerics", err.message)
                    op_type = re.search(r'op "(\w+)"', err.message)
                    self.stop(
                        node.group(1) if node else 'unknown',
                        op_type.group(1) if op_type else 'unknown',
                        'Found by tf.debugging.enable_check_numerics(). TensorFlow says:\n'
                        + err.message,
                    )

            checked.overflow_checked = True
            self.model.train_function = checked

    class NumericSummaries(OverflowCheck):
        """TF 1.15: the debugger computes a numeric summary of every float tensor
        of every step and writes only those holding an Inf or NaN
        (mute_if_healthy), so a healthy step leaves nothing to read. The
        earliest summary written names the op. (tf.add_check_numerics_ops would
        be simpler, but refuses graphs with tf.cond, which Keras' dropout and
        batch norm build in TF 1.15.)"""

        def on_train_begin(self, logs=None):
            self.dumps = os.path.join(folder, 'tfdbg')
            self.usual = _tf1_run_with(
                self.model,
                _tf1_watch_everything(
                    'DebugNumericSummary(mute_if_healthy=true)', self.dumps, dtypes='.*float.*'
                ),
            )

        def on_train_batch_end(self, batch, logs=None):
            unhealthy = [
                name
                for _, _, names in os.walk(self.dumps)
                for name in names
                if '_DebugNumericSummary_' in name
            ]
            if not unhealthy:
                for name in os.listdir(self.dumps):  # one small metadata file per step
                    if name.startswith('_tfdbg_core_metadata_'):
                        os.remove(os.path.join(self.dumps, name))
                super().on_train_batch_end(batch, logs)
                return
            from tensorflow.python import debug as tf_debug

            dump = tf_debug.DebugDumpDir(self.dumps, validate=False)
            data = sorted(dump.dumped_tensor_data, key=lambda datum: datum.timestamp)
            lines = [
                'Found by the TF 1.15 debugger (DebugNumericSummary of every float tensor).',
                'Tensors holding Inf/NaN in this step, in the order they were computed:',
            ]
            for datum in data[:REPORT_TENSORS]:
                summary = (
                    datum.get_tensor()
                )  # [initialized, count, NaN, -Inf, <0, 0, >0, +Inf, ...]
                lines.append(
                    '  %s:%d (%s): %d NaN, %d -Inf, %d +Inf of %d elements'
                    % (
                        datum.node_name,
                        datum.output_slot,
                        dump.node_op_type(datum.node_name),
                        summary[2],
                        summary[3],
                        summary[7],
                        summary[1],
                    )
                )
            if len(data) > REPORT_TENSORS:
                lines.append('  ... and %d more' % (len(data) - REPORT_TENSORS))
            first = data[0].node_name
            self.stop(first, dump.node_op_type(first), '\n'.join(lines))

        def on_train_end(self, logs=None):
            _tf1_run_with(self.model, compiled=self.usual)

    return NumericSummaries() if TF1 else CheckNumerics()


def _update_op(weight, optimizer) -> Tuple[str, str]:
    """(name, type) of the op that updates ``weight``: found in the TF 1.15 graph;
    described in TF 2, whose training step is a traced function."""
    if TF1:
        users = weight.op.outputs[0].consumers()
        for kind in ('Apply', 'AssignSub', 'AssignAdd'):  # optimizer, then moving averages
            for op in users:
                if kind in op.type:
                    return op.name, op.type
    return '%s update of %s' % (type(optimizer).__name__, weight.name), 'optimizer update'


def _data_dump(folder: str, steps: List[int]):
    """A callback that dumps every tensor of the training steps ``steps`` into
    ``folder``/step_<n>/, and nothing of the other steps."""
    steps = set(steps)

    class DataDump(keras.callbacks.Callback):
        target = None  # the folder of the step being dumped
        usual = None  # the usual training function (TF 2), or its compiled callable (TF 1.15)

        def on_train_batch_begin(self, batch, logs=None):
            step = _step(self.model)
            if step not in steps:
                return
            self.target = os.path.join(folder, 'step_%d' % step)
            if TF1:  # TF 1.15's debugger: DebugIdentity copies each tensor to a file
                self.usual = _tf1_run_with(
                    self.model, _tf1_watch_everything('DebugIdentity', self.target)
                )
                return
            tf.debugging.experimental.enable_dump_debug_info(
                self.target, tensor_debug_mode='FULL_TENSOR', circular_buffer_size=-1
            )
            # TF 2's dumping instruments graphs as they are traced: a training
            # function traced now dumps, the usual one (traced earlier) does not.
            self.usual = self.model.train_function
            self.model.train_function = self.model.make_train_function(force=True)

        def on_train_batch_end(self, batch, logs=None):
            if self.target is None:
                return
            if TF1:
                _tf1_run_with(self.model, compiled=self.usual)
            else:
                tf.debugging.experimental.disable_dump_debug_info()
                self.model.train_function = self.usual
            self.target = None

    return DataDump()


def _profiler(folder: str):
    """A callback that records a profiler trace of PROFILE_STEPS training steps,
    after the first PROFILE_SKIP_STEPS of the run, viewable in TensorBoard:
    TF 2's profiler (Profile tab); in TF 1.15, full-trace run metadata (Graphs
    tab) and a Chrome trace (timeline_step_<n>.json, for chrome://tracing)."""

    class Profiler(keras.callbacks.Callback):
        seen = traced = 0
        tracing = False

        def on_train_batch_begin(self, batch, logs=None):
            if self.tracing or self.seen < PROFILE_SKIP_STEPS or self.traced >= PROFILE_STEPS:
                return
            self.tracing = True
            if TF1:
                self.metadata = tf.compat.v1.RunMetadata()
                self.writer = tf.compat.v1.summary.FileWriter(folder)
                self.usual = _tf1_run_with(
                    self.model,
                    tf.compat.v1.RunOptions(
                        trace_level=tf.compat.v1.RunOptions.FULL_TRACE, output_partition_graphs=True
                    ),
                    self.metadata,
                )
            else:
                tf.profiler.experimental.start(folder)

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if not self.tracing:
                return
            self.traced += 1
            if TF1:
                from tensorflow.python.client import timeline

                step = _step(self.model) - 1
                self.writer.add_run_metadata(self.metadata, 'step_%d' % step, global_step=step)
                with open(os.path.join(folder, 'timeline_step_%d.json' % step), 'w') as f:
                    f.write(
                        timeline.Timeline(self.metadata.step_stats).generate_chrome_trace_format()
                    )
            if self.traced >= PROFILE_STEPS:
                self.finish()

        def on_train_end(self, logs=None):
            if self.tracing:  # the run (or this fit) ended before all the steps were traced
                self.finish()

        def finish(self) -> None:
            self.tracing = False
            if TF1:
                _tf1_run_with(self.model, compiled=self.usual)
                self.writer.close()
            else:
                tf.profiler.experimental.stop()

    return Profiler()
