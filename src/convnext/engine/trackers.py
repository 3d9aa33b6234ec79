"""Experiment trackers (``run.loggers``): TensorBoard, MLflow, Weights & Biases; opened on rank 0 only.

``metrics.jsonl`` is the record of a run (written first, always); a tracker gets copies of the same numbers
under the same names in every backend: ``step/loss``, ``step/lr``, ``step/images_per_s`` at the optimizer
step, ``epoch/<key>`` for every number of an epoch's metrics line at the epoch, the resolved config, and at
the end ``curves.png`` (TensorBoard and W&B as an image, MLflow as an artifact with config.yaml and
metrics.jsonl).

Each backend is the vendor's own client; what is written here is only what none of them does: keeping the
tracker's run id in ``<run.dir>/trackers.json`` so that resuming the run folder continues the same MLflow
and W&B run (a new run, ``--fresh`` included, starts a new one), and turning a tracker that cannot start
into one sentence before the first step.

Where things go:

* TensorBoard: ``<run.dir>/tb``. A resumed run drops the points a killed run logged after its checkpoint
  (``purge_step``), so curves do not zigzag.
* MLflow: ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///...``, ``file:...``), else a ``mlruns/``
  file store in the current directory (MLflow's classic default: runs started from one place sit side by
  side in one store). The store a run started in is kept in trackers.json, so a resume from another
  directory continues it there. MLflow 3.7+ refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``;
  asking for one (our default) sets it for this process. Experiment: ``MLFLOW_EXPERIMENT_NAME``, else
  ``convnext``; the run is named after the run folder; params are the flattened config (``optim.lr``), with
  values in YAML so that they paste back as overrides.
* W&B: ``wandb.init(dir=<run.dir>)`` (files in ``<run.dir>/wandb``), project ``WANDB_PROJECT`` or
  ``convnext``; ``WANDB_MODE=offline`` (or ``disabled``) and every other ``WANDB_*`` variable are wandb's
  own. Step metrics use ``global_step`` and epoch metrics ``epoch`` as their x axis (``define_metric``).

One point per step in MLflow, as in metrics.jsonl, after a resume too: MLflow keeps every point logged, a
repeated step included (it cannot delete one), and a run killed after its checkpoint (kill -9, a node lost)
had logged the steps the resumed run does again. So trackers.json also records the last step and epoch
MLflow acknowledged (its client logs synchronously), and a resumed run logs only past those (the numbers are
the same: resume is exact; a resume from an older checkpoint keeps the points MLflow has up to there, where
TensorBoard drops them). W&B is left to log them again: wandb's service buffers its writes, and a kill of
the process group loses what it had not written (offline, a killed run's transaction log held nothing),
so skipping would only widen that gap.

A tracker failing in the middle of a run (a tracking server going away) prints one warning and is dropped:
training goes on, metrics.jsonl has every record.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..messages import warn

LOGGERS = ("tensorboard", "mlflow", "wandb")
STATE_FILE = "trackers.json"
# the module to import, what to install when it is missing
_PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install 'convnext[mlflow]'"),
    "wandb": ("wandb", "pip install 'convnext[wandb]'"),
}
_TITLES = {"tensorboard": "TensorBoard", "mlflow": "MLflow", "wandb": "W&B"}


def _missing(name: str) -> UserError:
    module, install = _PACKAGES[name]
    return UserError(
        f"config key run.loggers names {name}, but the {module} package is not installed; {install} "
        f"(or drop {name} from run.loggers)"
    )


def check_loggers(names: Iterable[str]) -> None:
    """Each tracker is known and its package importable: checked on every rank before the run starts, without
    importing anything (mlflow and wandb take seconds to import)."""
    for name in names:
        if name not in _PACKAGES:
            raise UserError(f"config key run.loggers: unknown logger {name!r}; known: {', '.join(LOGGERS)}")
        module = _PACKAGES[name][0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or sys.modules[module] set to None
            found = False
        if not found:
            raise _missing(name)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.004}}`` -> ``{"optim.lr": "0.004"}``; non-strings in JSON (= YAML flow style),
    so a logged value pastes back as an override (``data.mean=[0.485, 0.456, 0.406]``,
    ``model.pretrained=null``)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def read_state(run_dir: Path) -> dict[str, Any]:
    """trackers.json: each tracker's run id, so that a resume continues the same run; {} when unreadable."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(run_dir: Path, name: str, entry: dict[str, Any]) -> None:
    state = read_state(run_dir)
    state[name] = entry
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, run_dir / STATE_FILE)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _probe(uri: str) -> None:
    """A tracking server that does not answer is one sentence in seconds: the client itself retries a refused
    connection with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES) before it says so."""
    import requests  # mlflow's own HTTP client

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as e:
        reason = "timed out" if isinstance(e, requests.Timeout) else "connection failed"
        raise UserError(
            f"MLflow tracking server {uri} is not reachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
            "or drop mlflow from run.loggers"
        ) from None


class Tracker:
    """One backend. ``kind`` is "step" (x = optimizer step) or "epoch" (x = epoch number); ``status`` at close
    is "finished", "stopped" (a stop signal after a checkpoint: the run will be resumed) or "failed"."""

    name = ""
    run_dir: Path
    state: dict[str, Any]  # this tracker's entry of trackers.json: its run's id and the last x logged
    logged: dict[str, int]  # kind -> the last x this tracker's run has (a resume skips up to there)

    def _remember(self, entry: dict[str, Any], saved: dict[str, Any]) -> None:
        """Keep ``entry`` (the run's id) in trackers.json, with the points logged so far when ``saved`` (the
        entry read at the start) is of the same run."""
        same = all(saved.get(k) == v for k, v in entry.items())
        self.logged = {k: int(v) for k, v in saved.get("logged", {}).items()} if same else {}
        self.state = {**entry, "logged": dict(self.logged)}
        write_state(self.run_dir, self.name, self.state)

    def _new_point(self, kind: str, x: int) -> bool:
        """Whether ``x`` is past what this tracker's run has already (else a resumed run logs it twice)."""
        return x > self.logged.get(kind, -1)

    def _logged(self, kind: str, x: int) -> None:
        self.logged[kind] = x
        self.state["logged"] = dict(self.logged)
        write_state(self.run_dir, self.name, self.state)

    def describe(self) -> str:
        raise NotImplementedError

    def log_metrics(self, kind: str, x: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def log_files(self, files: dict[str, Path], step: int) -> None:
        """``files``: curves (an image) and other run files (config.yaml, metrics.jsonl), those that exist."""

    def close(self, status: str) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        import yaml

        self.dir = run_dir / "tb"
        # After a resume, points a killed run logged past its checkpoint are dropped by TensorBoard's reader
        # (the epoch axis is never purged: an epoch number is below the step count that completed it).
        purge = resumed_step + 1 if resumed_step is not None else None
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=purge)
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), resumed_step or 0)

    def describe(self) -> str:
        return f"TensorBoard {self.dir}"

    def log_metrics(self, kind: str, x: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(f"{kind}/{k}", v, x)
        if kind == "epoch":
            self.writer.flush()

    def log_files(self, files: dict[str, Path], step: int) -> None:
        if "curves" in files:
            import numpy as np
            from PIL import Image

            with Image.open(files["curves"]) as im:
                img = np.asarray(im.convert("RGB"))
            self.writer.add_image("curves", img, step, dataformats="HWC")

    def close(self, status: str) -> None:
        try:
            self.writer.close()
        except OSError:  # a full disk: the checkpoint and metrics.jsonl matter, the event file does not
            pass


class MLflowTracker(Tracker):
    """The MLflow client API (not the fluent ``mlflow.start_run``: no process-global active run to leak into
    a notebook's own runs)."""

    name = "mlflow"
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_step: int | None) -> None:
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow") from None
        saved = read_state(run_dir).get("mlflow", {}) if resumed_step is not None else {}
        uri = os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri")
        if not uri:
            uri = (Path.cwd() / "mlruns").as_uri()
        from urllib.parse import urlparse

        if urlparse(uri).scheme in ("", "file") or len(urlparse(uri).scheme) == 1:  # a path (C:\ on Windows)
            if urlparse(uri).scheme != "file":  # absolute, so that a resume from elsewhere finds the store
                uri = Path(uri).expanduser().resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
        self.uri = uri
        where = f"MLflow at {uri}"
        if urlparse(uri).scheme in ("http", "https"):
            _probe(uri)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
            if run_id is not None:
                try:
                    run = self.client.get_run(run_id)
                except MlflowException:
                    warn(f"MLflow run {run_id} (trackers.json) is not in {uri}; starting a new one")
                    run_id = None
            if run_id is None:
                run = self.client.create_run(
                    self._experiment_id(MlflowException),
                    run_name=run_dir.name,
                    tags={"convnext.run_dir": str(run_dir.resolve())},
                )
            else:
                self.client.update_run(run_id, status="RUNNING")
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            self._log_params(config, dict(run.data.params))
        except MlflowException as e:
            raise UserError(
                f"{where} could not start a run: {_first_line(e)}; check MLFLOW_TRACKING_URI, or drop mlflow "
                "from run.loggers"
            ) from None
        except OSError as e:  # a server that does not answer (requests' errors are OSErrors)
            raise UserError(
                f"{where} is not reachable ({_first_line(e)}); start the tracking server, fix "
                "MLFLOW_TRACKING_URI, or drop mlflow from run.loggers"
            ) from None
        self.run_dir = run_dir
        entry = {"tracking_uri": uri, "experiment_id": self.experiment_id, "run_id": self.run_id}
        self._remember(entry, saved)

    def _experiment_id(self, MlflowException: type) -> str:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "convnext"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another run created it meanwhile
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _log_params(self, config: dict[str, Any], logged: dict[str, str]) -> None:
        """Params cannot change in MLflow: a resumed run logs the new keys, and a changed value (more epochs)
        as the tag ``resumed.<key>``."""
        from mlflow.entities import Param, RunTag

        flat = {k: v[:6000] for k, v in flatten_config(config).items()}
        params = [Param(k, v) for k, v in flat.items() if k not in logged]
        tags = [RunTag(f"resumed.{k}", v) for k, v in flat.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(params), len(tags)), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100], tags=tags[i : i + 100])

    def describe(self) -> str:
        return f"MLflow run {self.run_id} (experiment {self.experiment_id}) in {self.uri}"

    def log_metrics(self, kind: str, x: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if not self._new_point(kind, x):
            return
        now = int(time.time() * 1000)
        metrics = [Metric(f"{kind}/{k}", float(v), now, x) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self._logged(kind, x)

    def log_files(self, files: dict[str, Path], step: int) -> None:
        for path in files.values():
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[status])


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_step: int | None) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        saved = read_state(run_dir).get("wandb", {}) if resumed_step is not None else {}
        run_id = saved.get("id")  # None: wandb makes a new one
        try:
            self.run = wandb.init(
                dir=str(run_dir),
                project=os.environ.get("WANDB_PROJECT") or saved.get("project") or "convnext",
                name=run_dir.name,
                id=run_id,
                resume="allow",
                job_type="train",
                config=config,
                reinit="create_new",  # a notebook's earlier wandb.init is left alone
            )
        except Exception as e:  # wandb.errors.Error, OSError, its service's ("run ID ... is in use")
            raise UserError(
                f"W&B could not start a run: {_first_line(e)}; run `wandb login`, or set WANDB_MODE=offline "
                "(upload later with `wandb sync`), or drop wandb from run.loggers"
            ) from None
        self.run.define_metric("global_step")
        self.run.define_metric("step/*", step_metric="global_step")
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.offline = bool(getattr(self.run.settings, "_offline", False))
        write_state(run_dir, "wandb", {"id": self.run.id, "project": self.run.project})

    def describe(self) -> str:
        where = (
            f"offline in {Path(self.run.dir).parent}" if self.offline else (self.run.url or self.run.project)
        )
        return f"W&B run {self.run.id} ({where})"

    def log_metrics(self, kind: str, x: int, scalars: dict[str, float]) -> None:
        # No skipping here (see the module docstring): wandb's service buffers, and a kill takes what it had
        # not written with it, so what the run holds past its checkpoint is unknown; a resume logs it again.
        axis = "global_step" if kind == "step" else "epoch"
        self.run.log({axis: x, **{f"{kind}/{k}": v for k, v in scalars.items()}})

    def log_files(self, files: dict[str, Path], step: int) -> None:
        if "curves" in files:
            import wandb

            self.run.log({"global_step": step, "curves": wandb.Image(str(files["curves"]))})

    def close(self, status: str) -> None:
        if status == "stopped":
            self.run.mark_preempting()
        self.run.finish(exit_code=1 if status == "failed" else 0)


def open_trackers(
    names: Iterable[str],
    run_dir: Path,
    config: dict[str, Any],
    resumed_step: int | None,
) -> list[Tracker]:
    """The trackers ``names`` (deduplicated, in order); ``resumed_step``: the optimizer step of the checkpoint
    this run continues (None for a new run). One that cannot start closes those opened before it and raises
    its sentence."""
    opened: list[Tracker] = []
    try:
        for name in dict.fromkeys(names):
            if name == "tensorboard":
                opened.append(TensorBoardTracker(run_dir, config, resumed_step))
            elif name == "mlflow":
                opened.append(MLflowTracker(run_dir, config, resumed_step))
            elif name == "wandb":
                opened.append(WandbTracker(run_dir, config, resumed_step))
            else:
                raise UserError(
                    f"config key run.loggers: unknown logger {name!r}; known: {', '.join(LOGGERS)}"
                )
    except BaseException:
        for t in opened:
            try:
                t.close("failed")
            except Exception:  # the sentence being raised is what matters
                pass
        raise
    return opened
