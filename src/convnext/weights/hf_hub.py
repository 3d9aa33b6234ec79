"""Weights on the Hugging Face Hub: ``hf-hub:ORG/NAME[@REVISION]`` (timm's spelling) becomes a model folder.

``huggingface_hub`` downloads the files into its own cache (``HF_HUB_CACHE`` / ``HF_HOME``) and returns
the snapshot folder ``models--ORG--NAME/snapshots/<commit>/``, which every verb then reads as it reads a
Hugging Face folder on disk (``weights.files``: id2label / preprocessor_config.json for transformers'
ConvNext and ConvNextV2 repos, ``label_names`` / ``pretrained_cfg`` for timm's ``timm/convnext_*`` repos).
The library does the Hub's part (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` / ``hf auth login``,
revisions, resumable and shared downloads), so there is no HTTP code here; what we add is fetching only
the files a ConvNeXt needs (one weights file, not both formats) and one sentence for each failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from ..errors import UserError
from .files import HF_WEIGHT_FILES

PREFIX = "hf-hub:"
CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"  # transformers' image processor: size, crop_pct, resample, mean, std
SPELLING = "hf-hub:ORG/NAME[@REVISION]"


def is_hub(src: object) -> bool:
    """Whether ``src`` names weights on the Hub (``hf-hub:...``)."""
    return isinstance(src, str) and src.startswith(PREFIX)


def parse(src: str) -> tuple[str, str | None]:
    """``("ORG/NAME", "REVISION" or None)`` of ``hf-hub:ORG/NAME[@REVISION]``."""
    repo, _, revision = src[len(PREFIX) :].strip().partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")) or (revision == "" and src.endswith("@")):
        raise UserError(
            f"{src!r} is not a Hub repo; spell it {SPELLING}, e.g. hf-hub:timm/convnext_atto.d2_in1k"
        )
    return repo, revision or None


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(
            f"weights from the Hugging Face Hub ({SPELLING}) need the huggingface_hub package: "
            "pip install 'convnext[hub]'"
        ) from None
    return huggingface_hub


def _offline(constants: ModuleType) -> bool:
    is_offline = getattr(constants, "is_offline_mode", None)
    return bool(is_offline() if is_offline else constants.HF_HUB_OFFLINE)


def _kind(config: Path, name: str) -> str:
    """ "transformers" or "timm", from config.json; a repo of another model is one sentence."""
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: its config.json is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        cfg = {}
    model_type, arch = cfg.get("model_type"), cfg.get("architecture")
    if model_type == "upernet":  # transformers' UperNetForSemanticSegmentation: its backbone decides
        backbone = cfg.get("backbone_config")
        inner = backbone.get("model_type") if isinstance(backbone, dict) else None
        if isinstance(inner, str) and "convnext" in inner:
            return "transformers"
        raise UserError(
            f"{name} is a transformers UperNet on a {inner or 'named'!r} backbone, not a ConvNeXt"
        )
    if isinstance(model_type, str):  # transformers: convnext, convnextv2 (dinov3_convnext: DINOv3's)
        if "convnext" in model_type:
            return "transformers"
        raise UserError(f"{name} is a transformers {model_type!r} model, not a ConvNeXt")
    if isinstance(arch, str):  # timm: "architecture": "convnext_atto"
        if not arch.startswith("convnext"):
            raise UserError(f"{name} is a timm {arch!r} model, not a ConvNeXt")
        from ..models.factory import VARIANTS

        if arch not in VARIANTS:  # e.g. a timm variant whose forward differs where the shapes do not
            raise UserError(
                f"{name} holds timm's {arch}, which convnext cannot build (see `convnext models`)"
            )
        return "timm"
    raise UserError(
        f"{name}: its config.json names neither a transformers model_type nor a timm architecture "
        "(not a ConvNeXt model repo)"
    )


def _download(hub: ModuleType, repo: str, filename: str, revision: str | None) -> Path | None:
    """The cached file, or None when the repo has no such file (or, offline, it was never fetched)."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hub.hf_hub_download(repo, filename, revision=revision))
    except EntryNotFoundError:  # remote 404, or LocalEntryNotFoundError: not in the cache
        return None


def download(src: str) -> Path:
    """The local snapshot folder of ``hf-hub:ORG/NAME[@REVISION]`` (config.json, the image processor's
    config for transformers repos, and model.safetensors, else pytorch_model.bin), downloading what the
    cache lacks. Each file is read at the commit config.json came from, so the folder is one revision."""
    repo, revision = parse(src)
    hub = _hub()
    from huggingface_hub import constants, errors

    name = f"{PREFIX}{repo}" + (f"@{revision}" if revision else "")
    at = f"revision {revision!r}" if revision else "its main branch"
    offline = _offline(constants)
    try:
        config = Path(hub.hf_hub_download(repo, CONFIG, revision=revision))
        commit = config.parent.name  # .../models--ORG--NAME/snapshots/<commit>/config.json
        kind = _kind(config, name)
        if kind == "transformers":
            _download(hub, repo, PROCESSOR, commit)
        weights = next((f for f in HF_WEIGHT_FILES if _download(hub, repo, f, commit) is not None), None)
    except errors.GatedRepoError:
        raise UserError(
            f"{name} is a gated repo: accept its terms on the Hub, then log in (hf auth login) or set "
            "HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        raise UserError(
            f"{name}: no such repo on the Hugging Face Hub ({constants.ENDPOINT}), or it is private "
            "and no token (HF_TOKEN) grants access"
        ) from None
    except errors.RevisionNotFoundError:
        raise UserError(f"{name}: the repo {repo} has no {at} (a branch, tag or commit)") from None
    except errors.LocalEntryNotFoundError:
        cache = constants.HF_HUB_CACHE
        if offline:
            raise UserError(
                f"{name} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set; "
                "download it once online (same HF_HUB_CACHE)"
            ) from None
        raise UserError(
            f"{name}: cannot reach the Hugging Face Hub ({constants.ENDPOINT}) and it is not in the "
            f"cache {cache}; check the network (or HF_ENDPOINT)"
        ) from None
    except errors.EntryNotFoundError:
        raise UserError(f"{name} has no config.json at {at}: not a transformers or timm model repo") from None
    except errors.HFValidationError as e:
        raise UserError(f"{name} is not a valid Hub repo id or revision ({e})") from None
    except errors.HfHubHTTPError as e:
        raise UserError(f"{name}: the Hugging Face Hub answered {e}".splitlines()[0]) from None
    if weights is None:
        state = " (or none is cached: HF_HUB_OFFLINE is set)" if offline else ""
        raise UserError(
            f"{name} has no {' or '.join(HF_WEIGHT_FILES)} at commit {commit}{state} "
            "(sharded weights are not supported)"
        )
    return config.parent


def architecture(src: str) -> str:
    """Our name for the architecture a Hub repo holds (timm's ``create_model("hf-hub:ORG/NAME")``): timm's
    config.json names it; a transformers config by its depths and widths (the plain variant of them), a
    transformers UperNet (``openmmlab/upernet-convnext-*``) as ``upernet_`` + its backbone's."""
    folder = download(src)
    cfg = json.loads((folder / CONFIG).read_text())
    if isinstance(cfg.get("architecture"), str):  # timm's; download checked that we build it
        return cfg["architecture"]
    if cfg.get("model_type") == "upernet":
        return "upernet_" + _variant(cfg["backbone_config"], src)
    return _variant(cfg, src)


def _variant(cfg: dict, src: str) -> str:
    """The plain variant of a transformers ConvNeXt config's family, depths and widths."""
    from ..models.factory import VARIANTS

    family = "v2" if cfg.get("model_type") == "convnextv2" else "v1"
    shape = (tuple(cfg.get("depths") or ()), tuple(cfg.get("hidden_sizes") or ()))
    for name, v in VARIANTS.items():
        if (
            v.family == family
            and (tuple(v.kwargs.get("depths", ())), tuple(v.kwargs.get("dims", ()))) == shape
        ):
            return name
    raise UserError(
        f"{src}: no ConvNeXt variant has depths {list(shape[0])} and widths {list(shape[1])}; name the "
        f"architecture: create_model(ARCH, pretrained={src!r})"
    )
