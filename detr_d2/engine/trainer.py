"""``DetrTrainer`` (Detectron2 ``DefaultTrainer`` with DETR's data, optimiser and evaluators: the
public builders ``build_detr_train_loader`` / ``build_detr_test_loader`` / ``build_detr_optimizer``
/ ``build_detr_evaluator``, which any Detectron2 loop can call) and the ``setup`` / ``main`` used by
``tools/train_net.py``."""

import contextlib
import logging

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import DatasetEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint.checkpointer import AtomicDetectionCheckpointer
from ..checkpoint.foreign import UnfitWeightsError
from ..checkpoint.load_checks import WeightsNotFoundError, load_inference_weights
from ..checkpoint.safe_load import UntrustedCheckpointError
from ..config import add_detr_config
from ..config_rules import validate_detr_config
from ..data.build import build_detr_test_loader, build_detr_train_loader
from ..data.datasets.register_from_file import (
    add_command_line_datasets,
    register_datasets_from_config,
)
from ..evaluation.build import build_detr_evaluator
from ..utils.config_file import UnsafeConfigError, merge_config_file
from ..utils.cpu_memory import apply_cpu_memory_setting
from ..utils.output_dir import (
    OutputDirHasCheckpointsError,
    OutputDirInUseError,
    claim_output_dir,
    release_output_dir,
)
from .optimizer import build_detr_optimizer
from .training_curves import TrainingCurvesHook

logger = logging.getLogger(__name__)

# What train_net refuses with one ``error:`` line: files that would run code, weights that would
# load silently wrong (or no file), a busy or used OUTPUT_DIR.
REFUSALS = (
    UntrustedCheckpointError,
    UnfitWeightsError,
    WeightsNotFoundError,
    UnsafeConfigError,
    OutputDirInUseError,
    OutputDirHasCheckpointsError,
)


@contextlib.contextmanager
def _cpu_aware_ddp():
    """Within the block, Detectron2's ``create_ddp_model`` gives a CPU model ``device_ids=None``.

    ``DefaultTrainer.__init__`` wraps the model with ``create_ddp_model(model,
    broadcast_buffers=False)``, which passes ``device_ids=[local rank]``: right for a GPU, refused
    by DistributedDataParallel for a CPU model (``launch`` with several CPU processes and gloo).
    Nothing else of ``DefaultTrainer`` changes."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = original


class DetrTrainer(DefaultTrainer):
    """DefaultTrainer + DETR's mapper, AdamW with a backbone multiplier, and panoptic evaluators."""

    def __init__(self, cfg):
        """The config's rules for training (:func:`~detr_d2.config_rules.validate_detr_config`),
        then ``DefaultTrainer.__init__``; DistributedDataParallel gets ``device_ids=None`` for a CPU
        model, so ``launch`` with several CPU processes (gloo) works."""
        validate_detr_config(cfg, training=True)
        with _cpu_aware_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        """Detectron2's hooks, with ``self.checkpointer`` (made by ``DefaultTrainer.__init__``, used
        by ``PeriodicCheckpointer`` and ``resume_or_load``) replaced by an
        :class:`AtomicDetectionCheckpointer` over the same model and checkpointables: atomic saves,
        and a resume that survives a damaged last checkpoint; plus, last (after the writers flush
        ``metrics.json``), a :class:`TrainingCurvesHook` drawing
        ``OUTPUT_DIR/training_curves.png``."""
        old = self.checkpointer
        if not isinstance(old, AtomicDetectionCheckpointer):
            self.checkpointer = AtomicDetectionCheckpointer(
                old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
            )
        return super().build_hooks() + [TrainingCurvesHook(self.cfg.OUTPUT_DIR)]

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detr_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detr_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_detr_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None) -> DatasetEvaluator:
        return build_detr_evaluator(cfg, dataset_name, output_folder)


def setup(args) -> CfgNode:
    """Config from ``args.config_file`` (read as data: :func:`detr_d2.utils.config_file.
    merge_config_file`) + ``args.opts`` with detr_d2's options; the main process claims OUTPUT_DIR
    (:func:`detr_d2.utils.output_dir.claim_output_dir`: one run per folder, no fresh run over
    checkpoints unless ``args.overwrite_output``) before Detectron2's default setup writes there."""
    cfg = get_cfg()
    add_detr_config(cfg)
    merge_config_file(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    validate_detr_config(cfg, training=not args.eval_only)  # before anything is written
    if comm.is_main_process():
        claim_output_dir(
            cfg.OUTPUT_DIR,
            resume=args.resume,
            eval_only=args.eval_only,
            overwrite=getattr(args, "overwrite_output", False),
        )
    try:
        add_command_line_datasets(
            cfg, getattr(args, "register_dataset", None)
        )  # -> DATASETS.REGISTER_FILES
        cfg.freeze()
        default_setup(cfg, args)
        setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detr_d2")
        apply_cpu_memory_setting(cfg)  # CPU_REUSE_FREED_MEMORY (utils/cpu_memory.py)
        register_datasets_from_config(
            cfg
        )  # before the model, which reads the classes from the metadata
    except BaseException:
        release_output_dir(cfg.OUTPUT_DIR)
        raise
    return cfg


def main(args):
    """Train (or ``--eval-only`` evaluate) one process; under ``launch`` the process group is torn
    down after success (left to interpreter shutdown, gloo's threads can abort a worker). The
    OUTPUT_DIR lock taken by :func:`setup` is released at the end."""
    cfg = setup(args)
    try:
        result = _main(args, cfg)
    finally:
        release_output_dir(cfg.OUTPUT_DIR)
    if comm.get_world_size() > 1 and torch.distributed.is_initialized():
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def _main(args, cfg):
    if args.eval_only:
        model = DetrTrainer.build_model(cfg)
        checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        weights = cfg.MODEL.WEIGHTS
        if args.resume and checkpointer.has_checkpoint():
            weights = checkpointer.get_checkpoint_file()
        if weights:  # all of it, or an error naming the file (e.g. another class count)
            load_inference_weights(model, weights)
        else:
            logger.warning("--eval-only with no MODEL.WEIGHTS: evaluating a random model")
        res = DetrTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = DetrTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
