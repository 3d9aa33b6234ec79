"""The ConvNeXt family: V1 (``convnext.py``), V2 (``convnext_v2.py``), isotropic (``isotropic.py``)."""

from .base import FAMILIES, FAMILY_TITLES, ConvNeXtBase, Family, FeatureInfo
from .chunked_mlp import ChunkedBlock, set_chunked_mlp
from .convnext import GRN, Block, ConvNeXt, LayerNorm2d
from .convnext_v2 import BlockV2
from .factory import (
    VARIANTS,
    Variant,
    build_model,
    family_of_name,
    get_variant,
    has_layer_scale_by_default,
    layer_scale_option,
    list_models,
)
from .fcmae import FCMAE, FCMAE_VARIANTS, FcmaeOutput, create_fcmae
from .fuse import FusedBlock, fuse_for_inference
from .isotropic import ConvNeXtIsotropic
from .upernet import UperNet

__all__ = [
    "Block",
    "BlockV2",
    "ChunkedBlock",
    "ConvNeXt",
    "ConvNeXtBase",
    "ConvNeXtIsotropic",
    "FCMAE",
    "FCMAE_VARIANTS",
    "FcmaeOutput",
    "FAMILIES",
    "FAMILY_TITLES",
    "Family",
    "FeatureInfo",
    "FusedBlock",
    "GRN",
    "LayerNorm2d",
    "VARIANTS",
    "Variant",
    "build_model",
    "create_fcmae",
    "family_of_name",
    "fuse_for_inference",
    "get_variant",
    "has_layer_scale_by_default",
    "layer_scale_option",
    "list_models",
    "set_chunked_mlp",
    "UperNet",
]
