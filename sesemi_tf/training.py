"""One training run once TensorFlow runs: the models built in the strategy's
scope, the training stream, and the test evaluations, from the run's config,
its data and its labeled split."""

import numpy as np

import dataset
import networks
from dataset.common import to_unit_float
from sesemi_base.compat import set_seed
from sesemi_tf import device, execution, precise_bn
from sesemi_tf.evaluation import evaluate
from sesemi_tf.model import build_models, compile_model, lr_schedule
from sesemi_tf.model_io import Preprocessing
from sesemi_tf.parallel import DataParallel, network_scope
from sesemi_tf.pipeline import BatchSampler, make_dataset
from sesemi_tf.plan import make_plan, pool_size
from utils import IMAGES_PER_LABELED_STEP, preprocess


class Training:
    """The models, the schedule and the data of one run.

    Args:
        cfg: the run's config, the device and the replicas resolved.
        data: the run's dataset (``dataset.load_run``).
        labeled: the labeled split (``sesemi_tf.plan.labeled_split``).
        parallel: the data parallelism (``sesemi_tf.parallel.configure``).

    Attributes:
        cfg: ``cfg`` with the execution settings resolved (``sesemi_tf.execution``).
        plan: the run's size (``sesemi_tf.plan.Plan``) for the strategy's replicas.
        model, inference: the two-headed model that is fitted, and its supervised
            branch alone.
        evaluated: what is evaluated and saved: the inference model itself, or
            under a strategy a plain copy that gets its weights, with the
            replicas' mean statistics, before each use.
    """

    def __init__(self, cfg, data: dataset.Data, labeled: np.ndarray, parallel: DataParallel):
        self.info, self.parallel, self.labeled = data.info, parallel, labeled
        (self.x_train, self.y_train), (self.x_test, self.y_test) = data.train, data.test
        self.self_supervised = cfg.mode != 'supervised'
        pool = pool_size(cfg, len(self.x_train), len(labeled))
        self.plan = make_plan(cfg, pool, parallel.replicas, len(parallel.parts) / parallel.replicas)
        self.cfg = cfg = execution.configure(cfg, self.plan.steps_per_epoch)
        set_seed(cfg.seed)
        with parallel.scope(), network_scope(cfg):
            self.model, self.inference = self.make_models()
            self.schedule = lr_schedule(
                self.plan.base_lr, self.plan.total_steps, cfg.lr_decay_power
            )
            compile_model(
                self.model,
                self.schedule,
                self.self_supervised,
                device.optimizer_wrapper(cfg, parallel.all_reduce_wrapper()),
                **execution.compile_options(cfg),
            )
        self.evaluated = self.make_models()[1] if parallel.replicated() else self.inference
        if cfg.xla == 'on':
            self.evaluated.jit_compile = True  # the dense evaluation's predict calls
        self.preprocessing = self.zca = None

    def make_models(self):
        """A new (train model, inference model) pair of the run's network."""
        cfg, info = self.cfg, self.info
        trunk = networks.get(cfg.network)(info.shape, cfg.in_network_dropout, cfg.width)
        return build_models(
            trunk, info.shape, info.n_classes, self.self_supervised, cfg.super_dropout
        )

    def preprocess(self) -> None:
        """GCN (and ZCA); a uint8 training set is converted step by step in the pipeline."""
        zca = self.cfg.zca
        if self.x_train.dtype == np.uint8:  # ZCA, if asked for, is fitted on a float copy
            fit_on = to_unit_float(self.x_train) if zca else None
            _, self.x_test, self.zca = preprocess(fit_on, self.x_test, zca)
        else:
            self.x_train, self.x_test, self.zca = preprocess(self.x_train, self.x_test, zca)
        self.preprocessing = Preprocessing.for_dataset(self.info, self.zca, self.cfg.seed)

    def convert(self, images: np.ndarray):
        """The pipeline's conversion of ``images`` (uint8 ones only), else None."""
        return self.preprocessing.apply_tf if images.dtype == np.uint8 else None

    def dataset(self, first_step: int = 0):
        """The training stream, starting at step ``first_step``."""
        cfg, plan = self.cfg, self.plan
        pool = {'sesemi': np.arange(len(self.x_train)), 'asl': self.labeled, 'supervised': []}
        sampler = BatchSampler(
            self.labeled,
            pool[cfg.mode],
            plan.batch_size * IMAGES_PER_LABELED_STEP,
            plan.batch_size,
            cfg.seed,
        )
        # One-hot rows of the labeled images; the unlabeled images after them get zeros.
        labels = np.zeros((len(self.x_train), self.info.n_classes), np.float32)
        labels[np.arange(len(self.y_train)), self.y_train] = 1
        convert = self.convert(self.x_train)
        return self.parallel.dataset(
            lambda parts, n_parts: make_dataset(
                self.x_train,
                labels,
                sampler,
                cfg.seed,
                self.info.hflip,
                first_step,
                convert,
                parts,
                n_parts,
            )
        )

    def precise(self, count: int):
        """A copy of the inference model whose BatchNorm statistics are recomputed over
        ``count`` fixed labeled-branch batches (``sesemi_tf.precise_bn``); the trained
        models and their statistics are left as they are."""
        copy = self.make_models()[1]
        copy.set_weights(self.inference.get_weights())
        if self.cfg.xla == 'on':
            copy.jit_compile = True
        labeled = self.x_train[self.labeled]
        batches = precise_bn.labeled_batches(
            labeled,
            self.plan.batch_size * IMAGES_PER_LABELED_STEP,
            self.cfg.seed,
            self.info.hflip,
            self.convert(labeled),
        )
        precise_bn.recompute(copy, batches, count)
        return copy

    def evaluate(self, model=None) -> dict:
        """Test errors of the current weights (under multi_worker, every worker at once),
        or of ``model``'s."""
        if model is None and self.evaluated is not self.inference:
            self.evaluated.set_weights(self.inference.get_weights())
        return evaluate(
            model or self.evaluated, self.x_test, self.y_test, self.info.hflip, seed=self.cfg.seed
        )
