"""The data section of a recipe. Every knob of the pipeline is a key here (``data.<key>=value`` overrides)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: PIL's default ``Image.MAX_IMAGE_PIXELS`` (1024**3 // 4 // 3, ~89.5 Mpx): a 437 KB PNG can declare
#: 60000x60000 pixels and take 11 GB to decode.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def auto_workers() -> int:
    """``data.workers: auto``: min(8, the CPU cores this process may use / the training processes on this
    node), so a laptop or a small VM is not asked for more loader processes than it has cores (torch warns,
    and the workers would only take turns) and 8 GPUs on one node share its cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return min(8, cores // per_node)


@dataclass
class DataConfig:
    # what to read
    dataset: str = "imagefolder"  # imagefolder | digits | mnist | cifar10 | ... (convnext.data.DATASETS)
    root: str = ""  # folder holding the splits (ImageFolder: one sub-folder per class)
    train_split: str = "train"
    val_split: str = "val"
    # class index: None = auto (every folder an ImageNet-1k wnid -> "imagenet1k", else "folders");
    # "imagenet1k" (true ImageNet indices, 1000 classes), "folders" (sorted folder names), or a file with
    # one class per line (custom data; the names saved with the model)
    class_list: str | None = None
    strict: bool = False  # True: an unreadable image is fatal instead of skipped and counted
    check_headers: bool = True  # scan: read each file's first bytes (skips non-images, PNG-as-.jpg passes)
    # images whose header declares more pixels are refused before decoding (decompression bombs); 0: no limit
    max_pixels: int = DEFAULT_MAX_PIXELS
    download: bool = False  # mnist/cifar/caltech: let torchvision download into data.root
    val_fraction: float = 0.2  # digits, raw Caltech, pooled mini-ImageNet: share of each class for val
    split_seed: int = 0  # seed of that split (fixed: the val set must not change between runs)
    # few labels: keep N seeded images per class of the training split (the same N on every rank and resume,
    # drawn with split_seed); None: all
    labels_per_class: int | None = None
    # geometry (eval: resize shorter side to img_size / crop_pct, bicubic, center crop)
    img_size: int = 224
    crop_pct: float = 0.875
    # eval crop: "center" (resize the shorter side to floor(img_size / crop_pct), centre crop img_size) or
    # "squash" (resize the whole image to img_size x img_size, no crop: the official 384/512 evaluation);
    # a recipe that leaves it unset gets "squash" at img_size >= 384, as the official code (load_config)
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # train augmentation: the paper's recipe by default
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5-inc1"  # timm's notation; None disables
    reprob: float = 0.25  # RandomErasing probability
    mixup: float = 0.8  # MixUp alpha (0 disables)
    cutmix: float = 1.0  # CutMix alpha (0 disables)
    mixup_prob: float = 1.0  # probability a batch gets MixUp or CutMix at all
    mixup_switch_prob: float = 0.5  # when both are on, probability of CutMix rather than MixUp
    # loader
    # Workers hand over uint8 batches (4x less to copy, pin and send to the GPU); the float conversion,
    # normalization and RandomErasing of the train split run on the training device (as timm's prefetcher).
    normalize_on_device: bool = True
    workers: int = field(default_factory=auto_workers)  # a recipe may say auto (the default) or a count
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2  # batches each worker prepares ahead
    # semantic segmentation (upernet_*: mmseg's ADE20K pipeline, data/segmentation.py); data.img_size is the
    # training crop, data.hflip the flip probability
    seg_scale: tuple[int, int] = (2048, 512)  # resize scale (long, short side bounds), mmseg's img_scale
    seg_ratio_range: tuple[float, float] = (0.5, 2.0)  # train: the scale times a ratio drawn in this range
    cat_max_ratio: float = 0.75  # train crop: redrawn (up to 10 times) while one class covers more
    photometric: bool = True  # train: mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    reduce_zero_label: bool | None = None  # label 0 ignored, k -> k - 1; None: the dataset's (ade20k: true)
    scenes: tuple[int, int] = (2000, 200)  # digit-scenes datasets: train and val scene counts
    scene_size: int = 64  # digit-scenes datasets: the scenes' side in pixels
    scene_digits: int = 4  # digit-scenes datasets: 1 to this many digits per scene
    digit_size: tuple[int, int] | None = None  # digit-scenes: digits' sides in px (None: 22-56 per 128)
