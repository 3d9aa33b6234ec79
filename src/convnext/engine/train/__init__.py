"""Training, laid out as torchvision's ``references/classification/train.py``: ``loop.py`` the run from start
to end (:func:`train`, ``train_one_epoch``, ``evaluate_epoch``, ``end_epoch``), ``setup.py`` what is built
before the loop (process, run folder, data, model and optimizer, restored state), ``state.py`` the records
they share, ``signals.py`` stopping on SIGTERM/SIGUSR1/Ctrl-C, ``divergence.py`` NaN/inf losses and weights,
``console.py`` what rank 0 prints, ``samples.py`` ``run.export_samples``."""

from .divergence import TrainingDiverged
from .loop import train
from .setup import build_model, start_process
from .state import TrainResult

__all__ = ["TrainResult", "TrainingDiverged", "build_model", "start_process", "train"]
