"""Evaluate any weights on a labelled image folder (``convnext evaluate``): the data the flags or the run
describe, labelled in the checkpoint's own class order, run through :func:`convnext.evaluation.loop.evaluate`.

Under torchrun each process evaluates its shard (the sums are all-reduced; :attr:`Evaluation.main` says
which process reports). Every readable file counts exactly once; a file that cannot be used (empty, not an
image, truncated, above the pixel limit) is in no metric and is named in :attr:`Evaluation.dropped`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.config import DataConfig
from ..errors import UserError
from .loading import Loaded


@dataclass
class Evaluation:
    loaded: Loaded  # the model, its arch, class names, checkpoint file
    data: DataConfig  # what was evaluated: dataset, root, split, eval geometry
    device: torch.device
    metrics: dict[str, Any]  # convnext.evaluation.loop.evaluate's result (predictions when asked for)
    dropped: list[tuple[str, str]]  # every file left out, (file, why), sorted
    classes_present: int  # classes with at least one counted image
    ema: bool
    main: bool  # this process reports (rank 0 of a torchrun job, or a plain run)
    files: list[str] | None = None  # with predictions: each counted sample's file, in the predictions' order

    @property
    def where(self) -> str:
        return str(self.data.root or self.data.dataset)

    @property
    def has_top5(self) -> bool:
        """Top-5 says nothing with 5 classes or fewer (it is 100% by definition): not reported then."""
        return self.loaded.num_classes > 5

    def class_table(self) -> list[dict[str, Any]]:
        """One row per class in the data or the predictions: index, class, n (true images), predicted
        (images predicted as it), precision, recall, f1 (percent; see
        :func:`convnext.evaluation.metrics.class_metrics`)."""
        from ..evaluation.metrics import class_metrics
        from .loading import display_names

        m = class_metrics(self.metrics["confusion"])
        names = display_names(self.loaded.class_names, self.loaded.num_classes)
        return [
            {"index": c, "class": names[c] if c < len(names) else f"class {c}", "n": n, "predicted": k,
             "precision": round(pr, 4), "recall": round(rc, 4), "f1": round(f, 4)}
            for c, n, k, pr, rc, f in zip(
                m["classes"], m["support"], m["predicted"], m["precision"], m["recall"], m["f1"]
            )
        ]  # fmt: skip

    def class_summary(self) -> dict[str, float | None]:
        """macro_f1 and balanced_accuracy (percent; None without images)."""
        from ..evaluation.metrics import class_metrics

        m = class_metrics(self.metrics["confusion"])
        return {"macro_f1": m["macro_f1"], "balanced_accuracy": m["balanced_accuracy"]}

    def prediction_rows(self) -> list[dict[str, Any]]:
        """``--predictions``: one row per counted image, in dataset order: path, true and predicted class
        (index and name), the probability of the predicted class and of the true one, correct (1/0)."""
        from .loading import display_names

        res, names = self.metrics, display_names(self.loaded.class_names, self.loaded.num_classes)
        top1, targets = res["predictions"][:, 0].tolist(), res["targets"].tolist()
        p_top, p_true = res["probs"][:, 0].tolist(), res["target_probs"].tolist()
        files = self.files or [f"sample {i}" for i in range(len(targets))]
        return [
            {"path": f, "true": t, "true_class": names[t], "predicted": p, "predicted_class": names[p],
             "predicted_prob": round(pp, 6), "true_prob": round(pt, 6), "correct": int(p == t)}
            for f, t, p, pp, pt in zip(files, targets, top1, p_top, p_true)
        ]  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The JSON document of ``convnext evaluate --json``. ``top5`` is null with 5 classes or fewer."""
        res = self.metrics
        out = {k: res[k] for k in ("top1", "top5", "loss", "n", "images_per_s", "world_size") if k in res}
        if not self.has_top5:
            out["top5"] = None
        out.update(self.class_summary())
        out["per_class"] = self.class_table()
        out["dropped"] = len(self.dropped)
        out["dropped_files"] = [{"path": p, "reason": why} for p, why in self.dropped]
        out.update(
            model=self.loaded.arch,
            weights=self.loaded.checkpoint,
            ema=self.ema,
            data=self.where,
            split=self.data.val_split,
            img_size=self.data.img_size,
            crop_pct=self.data.crop_pct,
            crop_mode=self.data.crop_mode,
            device=str(self.device),
        )
        return out


def _data_config(
    loaded: Loaded,
    data: str | None,
    dataset: str | None,
    split: str | None,
    workers: int,
    max_pixels: int | None,
) -> DataConfig:
    """The data to evaluate: ``data`` (a folder; DIR/val when it exists), else the run's validation split."""
    cfg = loaded.data
    if data:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist")
        split = split if split is not None else ("val" if (root / "val").is_dir() else "")
        cfg = dataclasses.replace(
            cfg, dataset=dataset or "imagefolder", root=str(root), val_split=split, class_list=None
        )
    elif loaded.run_dir is None:
        raise UserError("--data is required (a folder of class folders) unless --weights is a run folder")
    elif split is not None:
        cfg = dataclasses.replace(cfg, val_split=split)
    if dataset and not data:
        cfg = dataclasses.replace(cfg, dataset=dataset)
    folder = Path(cfg.root).expanduser() / (cfg.val_split if cfg.dataset == "imagefolder" else "")
    if not data and cfg.root and not folder.is_dir():  # the run's data moved, or is on another machine
        raise UserError(
            f"the run's validation split {folder} does not exist here; pass --data DIR (a folder of class "
            "folders, or one holding val/)"
        )
    cfg.workers = max(int(workers), 0)
    if max_pixels is not None:
        cfg = dataclasses.replace(cfg, max_pixels=max_pixels)
    return cfg


def _labelled(ds: Any, loaded: Loaded, cfg: DataConfig) -> Any:
    """``ds`` with targets in the checkpoint's class order (wnid folders -> true ImageNet indices)."""
    from ..data.datasets import relabel
    from .loading import imagenet_wnid_names

    names = imagenet_wnid_names(loaded.class_names, loaded.num_classes)
    if names is not None:
        return relabel(ds, names, loaded.checkpoint)
    if len(ds.classes) != loaded.num_classes:
        raise UserError(
            f"{loaded.checkpoint} has a {loaded.num_classes}-class head but {cfg.root or cfg.dataset} "
            f"has {len(ds.classes)} classes and the checkpoint names none of them"
        )
    return ds


def _dropped(ds: Any, res: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """Every file left out (scan time and load time) as sorted (file, why), and the number of classes
    that still have a counted image."""
    from ..data.file_datasets import find_file_dataset

    load_time = list(res.get("dropped_files", []))
    files = sorted({*[(str(p), str(w)) for p, w in getattr(ds, "skipped", [])], *load_time})
    targets = list(ds.targets)
    fd = find_file_dataset(ds) if load_time else None
    gone = {p for p, _ in load_time}
    present = {t for i, t in enumerate(targets) if fd is None or fd.path(i) not in gone}
    return files, len(present)


def evaluate_weights(
    weights: str,
    *,
    model: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    ema: bool | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    amp: str | None = None,
    channels_last: bool = False,
    max_pixels: int | None = None,
    predictions: bool = False,
    progress: bool = False,
) -> Evaluation:
    """Load ``weights`` (file, URL, tag, HF folder or training run folder) and evaluate it on ``data`` (an
    image folder, DIR/<class>/<img> or DIR/val/<class>/<img>; default: a run's validation split).

    ``img_size``/``crop_pct`` default to the weights' own eval settings, ``max_pixels`` to theirs (0: no
    limit). The metrics always hold the confusion counts (per-class precision/recall/F1, exact across
    ranks). With ``predictions`` they also hold every sample's top-5, probabilities and target, in
    dataset order, and :attr:`Evaluation.files` names each sample's file (reports, ``--predictions``).
    Under torchrun this joins the process group, evaluates this rank's shard and leaves the group.
    """
    from .. import dist
    from ..data import build_dataset, build_eval_transform, build_loader
    from ..device import amp_dtype, resolve_device
    from ..evaluation.loop import evaluate
    from .loading import for_bf16_inference, load_for_inference

    want = resolve_device(device)
    _, world, local_rank = dist.init_distributed(want.type)
    dev = torch.device("cuda", local_rank) if want.type == "cuda" and world > 1 else want
    main = dist.is_main()
    dtype = amp_dtype(amp, dev)
    try:
        loaded = load_for_inference(weights, model, ema=ema, img_size=img_size, crop_pct=crop_pct)
        cfg = _data_config(loaded, data, dataset, split, workers, max_pixels)
        with warnings.catch_warnings():  # the files left out at scan time are in Evaluation.dropped
            warnings.filterwarnings("ignore", message=r".*skipped \d+ unusable file", category=RuntimeWarning)
            ds = build_dataset(cfg, cfg.val_split, build_eval_transform(cfg), on_error="drop")
        ds = _labelled(ds, loaded, cfg)
        loader = build_loader(ds, batch_size, train=False, cfg=cfg, seed=0, distributed=dist.is_dist())
        net = for_bf16_inference(loaded.model.to(dev), dev, dtype)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        res = evaluate(
            net,
            loader,
            dev,
            amp_dtype=dtype,
            channels_last=channels_last,
            progress=progress,
            return_predictions=predictions,
            warn_dropped=False,
            confusion=True,
        )
    finally:
        if dist.is_dist():
            dist.cleanup()
    dropped, present = _dropped(ds, res)
    files = _files(ds, res) if predictions else None
    ev_ema = bool(getattr(loaded.info, "ema", ema))
    return Evaluation(loaded, cfg, dev, res, dropped, present, ev_ema, main, files)


def _files(ds: Any, res: dict[str, Any]) -> list[str]:
    """The file of each sample in ``res["predictions"]`` (by its dataset index); "sample N" for a
    dataset that is not files."""
    from ..data.file_datasets import find_file_dataset

    fd = find_file_dataset(ds)
    indices = res.get("indices")
    if indices is None:
        return [f"sample {i}" for i in range(len(res["targets"]))]
    return [fd.path(i) if fd is not None else f"sample {i}" for i in indices.tolist()]
