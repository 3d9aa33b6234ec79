"""ConvNeXt for PyTorch: every published variant, weights from any ecosystem, and the tools to train them."""

from .hub import create_model
from .models import list_models

__version__ = "0.1.0"


def load_checkpoint(model, src, **kwargs):  # noqa: ANN001, ANN003, ANN201 - re-exported, typed at the source
    """See :func:`convnext.weights.load.load_checkpoint`."""
    from .weights.load import load_checkpoint as _load

    return _load(model, src, **kwargs)


__all__ = ["create_model", "list_models", "load_checkpoint", "__version__"]
