"""What a run shows and records while it trains: the step logger (a Keras callback
that closes every epoch: metrics.jsonl, train.log, TensorBoard, checkpoints, the
stop on a non-finite loss or a signal), progress lines or bar, and the model
summary."""

import math
import os
import signal
import sys
import time
from typing import List

import numpy as np

from sesemi_base.compat import ScalarWriter, keras, to_float
from sesemi_base.files import write_metrics
from sesemi_tf.checkpoints import fault_point, folder_guard


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
        """Prints a line if the last one is ``seconds`` old."""
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
    print(f'Total params: {total:,}\nTrainable params: {trainable:,}')
    print(f'Non-trainable params: {total - trainable:,}')


class StepLogger(keras.callbacks.Callback):
    """The Keras callback that watches the steps and closes every epoch.

    After each execution (``steps_per_execution`` steps; one on TF 1.15): stops
    at ``total_steps``; stops at once on a non-finite loss (no checkpoint is
    written, so the last good one stays the newest); saves a checkpoint every
    ``ckpt_every_steps`` or when a SIGTERM/Ctrl-C arrived; shows progress.
    Under multi_worker the workers first agree whether any of them was signalled
    (``vote``). Per epoch: evaluates when due, appends the epoch's row to
    metrics.jsonl, prints it, then saves a checkpoint; every ``eval_every_steps``
    inside an epoch, a row with the epoch's losses so far and an evaluation. The
    step count is read from the optimizer once per epoch and followed from Keras'
    batch index in between.

    Args:
        run: the ``sesemi_tf.training.Training``.
        rows: the metrics rows so far (those of a resumed run), appended to.
        ckpts: the run's ``sesemi_tf.checkpoints.Checkpoints``.
        interrupt: the ``sesemi_tf.checkpoints.Interrupt`` that catches signals.
    """

    nan = None  # (step, logs) of the first non-finite loss
    stop_signal = None  # the signal to stop for, once agreed (``vote``)

    def __init__(self, run, rows: List[dict], ckpts, interrupt):
        super().__init__()
        self.run, self.rows, self.ckpts, self.interrupt = run, rows, ckpts, interrupt
        cfg, plan = run.cfg, run.plan
        self.saved_step, self.current = -1, 0  # the step count after the last execution
        self.metrics_path = os.path.join(cfg.result, 'metrics.jsonl')
        self.log_path = os.path.join(cfg.result, 'train.log')
        self.check_folder = folder_guard(cfg.result)
        self.tensorboard = (
            ScalarWriter(os.path.join(cfg.result, 'tensorboard')) if run.parallel.chief else None
        )
        # A progress bar with the run's ETA where someone watches a terminal, else lines.
        self.progress = keras.utils.Progbar(plan.total_steps) if sys.stdout.isatty() else None
        self.lines = (
            None
            if self.progress
            else ProgressLines(plan.total_steps, plan.images_per_step, cfg.log_every_seconds)
        )

    def step(self) -> int:
        """The step count after the last execution."""
        return self.current

    def vote(self) -> bool:
        """Whether to stop for a SIGTERM or Ctrl-C. Under multi_worker every worker
        votes at the same point and all stop if one was signalled; a signal that
        arrives after a vote waits for the next, so all stop at the same step."""
        signalled = self.interrupt.signal is not None
        if self.stop_signal is None and self.run.parallel.agree(signalled):
            self.stop_signal = self.interrupt.signal or signal.SIGTERM  # another worker's
        return self.stop_signal is not None

    def save(self, step: int) -> None:
        """Writes the checkpoint of ``step``, once."""
        if step != self.saved_step:
            self.check_folder()
            self.ckpts.save(step)
            self.saved_step = step

    def evaluation_due(self, step: int) -> bool:
        """Whether ``--eval_every_steps`` asks for an evaluation at ``step``."""
        every = self.run.cfg.eval_every_steps
        return bool(every) and step % every == 0

    def record(self, epoch: int, step: int, logs: dict, evaluate: bool) -> dict:
        """Appends the row of ``step`` to metrics.jsonl, the log, the console and TensorBoard."""
        run = self.run
        seconds, steps = time.time() - self.start, step - self.start_step
        row = {
            'epoch': epoch + 1,
            'step': step,
            'lr': to_float(run.schedule(step)),
            'loss': float(logs['loss']),
            'super_loss': float(logs.get('super_clf_loss', logs.get('categorical_crossentropy'))),
            'self_loss': float(logs['self_clf_loss']) if 'self_clf_loss' in logs else None,
            'ms_per_step': 1000.0 * seconds / max(1, steps),
            'images_per_sec': steps * run.plan.images_per_step / max(seconds, 1e-9),
        }
        if evaluate:
            fault_point('evaluation', step)
            row.update(run.evaluate())
        self.rows.append(row)
        line = format_row(row, run.plan.epochs, run.plan.total_steps)
        print(('\n' if self.progress else '') + line, flush=True)
        if not run.parallel.chief:
            return row
        self.check_folder()
        write_metrics(self.metrics_path, self.rows)
        with open(self.log_path, 'a') as f:
            f.write(line + '\n')
        self.tensorboard.write(
            step,
            {
                ('test/' if k.startswith('error') else 'train/') + k: v
                for k, v in row.items()
                if v is not None and k not in ('epoch', 'step')
            },
        )
        return row

    def on_epoch_begin(self, epoch, logs=None):
        """Reads the step count from the optimizer."""
        self.epoch = epoch
        self.current = int(to_float(self.model.optimizer.iterations))
        self.start, self.start_step = time.time(), self.current
        if self.lines:
            self.lines.begin(self.current)

    def on_train_batch_end(self, batch, logs=None):
        """Follows the step, shows progress, and stops or checkpoints when due."""
        # ``batch`` is the index, in this epoch, of the execution's last step.
        cfg, plan = self.run.cfg, self.run.plan
        previous, step = self.current, self.start_step + batch + 1
        self.current = step
        for passed in range(previous + 1, step + 1):
            fault_point('step', passed)
        losses = {k: float(v) for k, v in (logs or {}).items() if 'loss' in k}
        if self.progress:
            self.progress.update(step, sorted(losses.items()))
        else:
            self.lines.update(step, losses)
        stopping = self.vote()
        if not all(np.isfinite(v) for v in losses.values()):
            self.nan = (step, losses)
            self.model.stop_training = True
        elif stopping:
            self.save(step)
            self.model.stop_training = True
        elif step >= plan.total_steps:
            self.model.stop_training = True
        else:
            # Inside an epoch only: the epoch's end evaluates and records by itself.
            if self.evaluation_due(step) and step % plan.steps_per_epoch:
                self.record(self.epoch, step, logs or {}, evaluate=True)
            if cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0:
                self.save(step)

    on_batch_end = on_train_batch_end  # TF 1.15 calls this name

    def on_epoch_end(self, epoch, logs=None):
        """Records the epoch's row (evaluating when due) and checkpoints."""
        cfg, plan, step = self.run.cfg, self.run.plan, self.step()
        if self.nan or (self.stop_signal is not None and step < plan.total_steps):
            return  # a partial epoch: its row is written when it is finished
        last = step >= plan.total_steps
        due = bool(cfg.eval_every) and (epoch + 1) % cfg.eval_every == 0
        self.record(epoch, step, logs or {}, evaluate=last or self.evaluation_due(step) or due)
        if not cfg.ckpt_every_steps or last:
            self.save(step)
