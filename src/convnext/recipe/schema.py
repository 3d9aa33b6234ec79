"""The recipe's typed sections and their defaults: what a training run, its config.yaml and its
checkpoints record."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.config import DataConfig


@dataclass
class ModelConfig:
    name: str = "convnext_tiny"  # an architecture of convnext.list_models()
    pretrained: str | None = None  # weight tag, file or URL to start from (fine-tuning); None: from scratch
    num_classes: int | None = None  # None: the dataset's class count
    drop_path_rate: float = 0.1  # stochastic depth at the last block (linear from 0)
    layer_scale_init_value: float = 1e-6
    head_init_scale: float = 1.0
    grad_checkpointing: bool = False
    chunked_mlp: bool = True  # CPU fp32: the block MLP in row chunks (same math, half the activations)
    options: dict = field(default_factory=dict)  # extra constructor arguments, e.g. {depths: [1,1,3,1]}


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 4e-3  # learning rate at an effective batch of lr_base_batch (scaled linearly to the real one)
    lr_base_batch: int | None = 4096  # None: use lr as given, whatever the batch
    weight_decay: float = 0.05  # not applied to norms, biases, layer scale and GRN gamma/beta
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    layer_decay: float | None = None  # layer-wise lr decay (official ConvNeXt layer ids); None or 1: off
    clip_grad: float | None = None  # max global gradient norm; None: no clipping
    fused: bool | None = None  # None: fused AdamW where this torch supports it


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant | poly (segmentation's: linear decay to min_lr) | step (mmdet's)
    warmup_epochs: float = 20.0  # linear warmup, stepped per optimizer step
    warmup_ratio: float = 0.0  # the warmup's first lr / the peak (mmcv's warmup_ratio; the official code: 0)
    min_lr: float = 1e-6  # cosine floor
    milestones: list[float] = field(default_factory=list)  # step: epochs at which the lr is x gamma
    gamma: float = 0.1  # step: the factor at each milestone


@dataclass
class TrainLoopConfig:
    batch_size: int = 128  # per device
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size x devices x accum_steps
    label_smoothing: float = 0.1
    amp: str = "none"  # none | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None: torch's default
    log_every: int = 50  # optimizer steps between progress-bar / TensorBoard updates (one host sync each)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated); 0: never
    eval_batch_size: int | None = None  # None: 2 x batch_size
    progress: bool = True
    # train.amp=bf16 on a CPU without native bf16 (AVX512-BF16, AMX) trains in fp32; true: bf16 anyway
    emulated_bf16: bool = False
    # refuse a training step estimated to need more than the device's memory (GPU, else RAM); false: skip
    memory_check: bool = True


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = 0.9999
    eval: bool = True  # evaluate the EMA weights alongside the model every evaluation


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also save every N optimizer steps (0: only at the end of each epoch)
    keep_last: int = 3  # epoch_XXXX.pth files kept (last.pth and best.pth are always kept)
    best_by: str = "auto"  # auto (EMA top-1 if EMA is evaluated, else model) | ema | model


@dataclass
class RunConfig:
    dir: str = "runs/run"  # run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, curves.png
    auto_resume: bool = True  # resume <dir>/checkpoints/last.pth when it exists
    export_samples: int = 0  # write this many validation images as PNG into <dir>/samples/
    # experiment trackers fed besides metrics.jsonl (rank 0): tensorboard (<dir>/tb), mlflow
    # (MLFLOW_TRACKING_URI or ./mlruns), wandb (<dir>/wandb; WANDB_MODE=offline works offline); []: none
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class TrainConfig:
    epochs: int = 300
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
