"""Launching at scale, as far as one machine allows: two "nodes" (two torchrun agents meeting at a c10d
rendezvous on 127.0.0.1) train exactly as one agent with two processes, and torchrun's elastic restart after
a rank is killed resumes the group from the last step checkpoint and ends bit-identical to an uninterrupted
run. Each run: the digits quickstart, a tiny model, 2 CPU processes on gloo.

The trainings take a minute each (four starts of torch on a busy CI machine): they are marked slow, and CI
runs the same launches with a probe worker that only joins the process group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from convnext.engine.checkpoint import load_train_checkpoint
from convnext.engine.pauses import TEST_PAUSE_ENV

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
RECIPE = [
    "epochs=1",
    "data.val_fraction=0.8",  # 359 training images: 5 steps of 2 x 32 per epoch
    "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "train.batch_size=32",
    "train.progress=false",
    "train.log_every=1",
    "run.export_samples=0",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop(TEST_PAUSE_ENV, None)
TIMING = ("epoch_time_s", "images_per_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multi_node(port: int, rdzv_id: str) -> list[str]:
    """torchrun's arguments for one of two "nodes" of one process each, meeting at 127.0.0.1:``port``."""
    return [
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"127.0.0.1:{port}",
        "--rdzv_id",
        rdzv_id,
    ]


def train_args(run_dir: Path, *extra: str) -> list[str]:
    return ["-m", "convnext.cli.main", "train", "--config", str(QUICK), *RECIPE, f"run.dir={run_dir}", *extra]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing fields (the only ones that differ between equal runs)."""
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical: every weight and optimizer tensor of last.pth, and every metrics line but timings."""
    ca = load_train_checkpoint(a / "checkpoints" / "last.pth")
    cb = load_train_checkpoint(b / "checkpoints" / "last.pth")
    assert ca["step"] == cb["step"] > 0 and ca["world_size"] == cb["world_size"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    assert metrics(a) == metrics(b)


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one agent, two processes (`torchrun --nproc_per_node 2`)."""
    run_dir = tmp_path_factory.mktemp("two_procs")
    run(torchrun("--standalone", "--nproc_per_node", "2", *train_args(run_dir)))
    return run_dir


# ---------------------------------------------------------------------------- multi-node: c10d rendezvous
@pytest.mark.slow
def test_two_agents_at_a_c10d_rendezvous_equal_one_agent_with_two_processes(
    two_procs: Path, tmp_path: Path
) -> None:
    """The README's multi-node command on one machine: two torchrun agents (two "nodes" of one process
    each) meet at a c10d rendezvous on 127.0.0.1; the run is the one-agent run, bit for bit, written once."""
    port = free_port()
    agent = torchrun(*multi_node(port, "test-launch"), *train_args(tmp_path))
    nodes = [
        subprocess.Popen(
            agent, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in nodes]
    for p, out in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    assert_same_run(two_procs, tmp_path)
    ckpt = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # only global rank 0 writes, though each "node" has a local rank 0: one line per epoch, one summary
    done = [ln for out in outs for ln in out.splitlines() if "done, 1 epoch in" in ln]
    assert len(done) == 1, outs
    assert len(metrics(tmp_path)) == 1


# ---------------------------------------------------------------- the process group a torchrun agent forms
# A worker without the training: it joins the group through convnext.dist as `convnext train` does, sums the
# ranks, and says what it is. With PROBE_FAIL=<file>, the first group fails: its rank 0 dies after the sum
# (leaving the file) and rank 1 waits to be torn down; in the restarted group rank 0 joins 3 s late, so that
# rank 1 reads the store first (where the dead group's addresses still are).
PROBE = """\
import os, sys, time
from pathlib import Path
import torch
from convnext import dist
marker = os.environ.get("PROBE_FAIL")
again = bool(marker) and Path(marker).exists()
if again and os.environ["RANK"] == "0":
    time.sleep(3)
rank, world, local = dist.init_distributed("cpu")
t = torch.tensor([float(rank + 1)])
torch.distributed.all_reduce(t)
print(f"probe: {'again' if again else 'first'} rank {rank} local {local} world {world} main {dist.is_main()} "
      f"sum {t.item():g}")
sys.stdout.flush()
if marker and not again:
    if rank == 0:
        Path(marker).touch()
        os._exit(1)
    time.sleep(120)  # until torchrun tears the group down (a clean exit would remove the group's keys)
dist.cleanup()
"""


def probe_lines(out: str) -> list[str]:
    """The probes' reports, sorted. Found by pattern, not by line: the ranks share torchrun's stdout, and a
    report can land in the middle of another's line (seen in CI: two on one line)."""
    import re

    return sorted(re.findall(r"probe: \w+ rank \d+ local \d+ world \d+ main \w+ sum \d+", out))


def test_two_agents_form_one_group_with_one_main_rank(tmp_path: Path) -> None:
    """The c10d rendezvous of two agents ("nodes") on one machine: global ranks 0 and 1, each local rank 0;
    only global rank 0 is the main (writing) process, though each node has a local rank 0."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    port = free_port()
    agent = torchrun(*multi_node(port, "probe"), str(script))
    nodes = [
        subprocess.Popen(
            agent, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert probe_lines("".join(outs)) == [
        "probe: first rank 0 local 0 world 2 main True sum 3",
        "probe: first rank 1 local 0 world 2 main False sum 3",
    ]


@pytest.mark.parametrize(
    "rendezvous", ["static", pytest.param("c10d", marks=pytest.mark.slow)], ids=["static", "standalone"]
)
def test_a_restarted_group_never_reads_the_dead_groups_addresses(tmp_path: Path, rendezvous: str) -> None:
    """torchrun --max-restarts keeps its store across restarts; the restarted group's keys are its own (rank
    1 reading the dead rank 0's gloo address failed with 'Connection refused' before). Both of torchrun's
    one-node rendezvous: static (the README's `torchrun --nproc_per_node 2 --max-restarts 3`), and c10d
    (--standalone) under -m slow."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    where = ["--standalone"] if rendezvous == "c10d" else ["--master_port", str(free_port())]
    cmd = torchrun(*where, "--nproc_per_node", "2", "--max-restarts", "1", str(script))
    r = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**ENV, "PROBE_FAIL": str(tmp_path / "failed")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert probe_lines(r.stdout) == [
        f"probe: {a} rank {k} local {k} world 2 main {k == 0} sum 3"
        for a in ("again", "first")
        for k in (0, 1)
    ]


@pytest.mark.slow
def test_two_agents_restart_together_with_a_fresh_store_per_group(tmp_path: Path) -> None:
    """Several nodes: each agent counts its own restarts, so convnext.dist cannot name a group's keys;
    torchrun's TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (the examples set it) gives each group a store of its own.
    Rank 0's node fails, both agents meet again at the rendezvous and the new group forms."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    agent = torchrun(*multi_node(free_port(), "restarts"), "--max-restarts", "1", str(script))
    env = {**ENV, "PROBE_FAIL": str(tmp_path / "failed"), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    nodes = [
        subprocess.Popen(
            agent, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert probe_lines("".join(outs)) == [
        f"probe: {a} rank {k} local 0 world 2 main {k == 0} sum 3" for a in ("again", "first") for k in (0, 1)
    ]


# ------------------------------------------------------------------------------------ elastic restart
# torchrun runs this instead of `-m convnext.cli.main`: the first attempt pauses where the test kills a rank;
# the restarted group (TORCHELASTIC_RESTART_COUNT=1) must not pause there again.
WORKER = """\
import os, sys
if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
    os.environ.pop("CONVNEXT_TEST_PAUSE_AT", None)
from convnext.cli.main import main
sys.exit(main())
"""


def rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).partition(b"=")[2])


def stop(proc: subprocess.Popen, pids: list[int]) -> None:
    """End a torchrun that is still running and its workers (which torchrun starts in sessions of their
    own, out of reach of a signal to its process group)."""
    if proc.poll() is None:
        proc.terminate()  # torchrun passes SIGTERM on to the workers of the moment, and waits for them
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def elastic_run(tmp_path: Path, kill_rank: int) -> tuple[subprocess.CompletedProcess, Path]:
    """`torchrun --nproc_per_node 2 --max-restarts 1` with a step checkpoint every 2 steps; both ranks stop
    after step 3 (step 2's checkpoint is on disk), rank ``kill_rank`` dies of SIGKILL there, torchrun tears
    the group down and starts it again; returns the run's output (first attempt, then the rest). Two loader
    workers per rank (the reference run has none: the same run, as the README says)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run_dir = tmp_path / "run"
    cmd = torchrun(
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "--monitor-interval",
        "0.2",
        str(worker),
        *train_args(run_dir, "checkpoint.every_steps=2", "data.workers=2")[2:],
    )
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**ENV, TEST_PAUSE_ENV: "step@3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    pids: list[int] = []
    deadline = time.monotonic() + 180
    while len(pids) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        # the two ranks print at once: their lines may interleave, so the pids are searched, not parsed
        pids = [int(p) for p in re.findall(r"paused at step@3 \(pid (\d+)\)", "".join(seen))]
    if len(pids) < 2:
        stop(proc, pids)
        pytest.fail("".join(seen)[-4000:])
    assert load_train_checkpoint(run_dir / "checkpoints" / "last.pth")["step"] == 2
    victim = next(p for p in pids if rank_of(p) == kill_rank)
    os.kill(victim, signal.SIGKILL)
    try:
        proc.wait(timeout=240)
    finally:
        stop(proc, pids)
    reader.join(timeout=10)
    out = "".join(seen)
    return subprocess.CompletedProcess(cmd, proc.returncode, out), run_dir


@pytest.mark.slow
@pytest.mark.parametrize("kill_rank", [1, 0], ids=["rank1", "rank0"])
def test_elastic_restart_after_a_killed_rank_resumes_bit_identical(
    two_procs: Path, tmp_path: Path, kill_rank: int
) -> None:
    """The whole story of an elastic restart: the group dies with one rank (rank 0: the writer and holder of
    the run folder's lock, or rank 1), torchrun starts it again, it resumes from the step checkpoint by itself
    (run.auto_resume) and ends as the uninterrupted run, bit for bit."""
    r, run_dir = elastic_run(tmp_path, kill_rank)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "resuming" in r.stdout, r.stdout[-4000:]
    assert_same_run(two_procs, run_dir)


# ------------------------------------------------------------------------------ the scheduler examples
EXAMPLES = ROOT / "examples"


def imagenet_folder(root: Path) -> Path:
    """A reader's /data/imagenet in miniature (train/ and val/, three classes of two images)."""
    from PIL import Image

    from convnext.data import imagenet1k_wnids

    for split in ("train", "val"):
        for c, wnid in enumerate(imagenet1k_wnids()[:3]):
            for i in range(2):
                path = root / split / wnid / f"{wnid}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 40), (80 * c, 40 * i, 0)).save(path)
    return root


def check_train_argv(argv: list[str], tmp_path: Path) -> None:
    """``argv`` (what torchrun runs after ``-m convnext.cli.main``) is a `convnext train` command our CLI
    accepts: its --dry-run passes, with the reader's /data and /runs as small folders here."""
    from convnext.cli.main import main

    assert argv[0] == "train", argv
    data = imagenet_folder(tmp_path / "data" / "imagenet")
    here = [a.replace("/data/imagenet", str(data)).replace("/runs/", f"{tmp_path}/runs/") for a in argv]
    # the ImageNet recipe's memory check is for a GPU's batch of 128 at 224 px; this CPU may lack the RAM
    assert main([*here, "--dry-run", "train.memory_check=false"]) == 0


def torchrun_args(command: list[str]) -> argparse.Namespace:
    """``command`` as torchrun's own parser reads it: the module it runs must be our CLI."""
    from torch.distributed.run import get_args_parser

    assert command[0] == "torchrun", command
    args = get_args_parser().parse_args(command[1:])
    assert args.module and args.training_script == "convnext.cli.main", command
    return args


def manifests(name: str) -> list[dict]:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all((EXAMPLES / "kubernetes" / name).read_text()) if d]


def test_kubernetes_job_runs_torchrun_elastic_on_a_headless_service(tmp_path: Path) -> None:
    service, job = manifests("job.yaml")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and pod["restartPolicy"] == "Never"
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert pod["terminationGracePeriodSeconds"] >= 60 and job["spec"]["backoffLimit"] > 0
    (container,) = pod["containers"]
    args = torchrun_args(container["command"] + container.get("args", []))
    nodes = job["spec"]["completions"]
    assert args.nnodes == str(nodes) == str(job["spec"]["parallelism"])
    assert args.rdzv_backend == "c10d" and args.max_restarts > 0
    host, port = args.rdzv_endpoint.split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert int(args.nproc_per_node) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in container["env"]
    check_train_argv(args.training_script_args, tmp_path)


def test_kubernetes_pytorchjob_gives_torchrun_a_fixed_elastic_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (job,) = manifests("pytorchjob.yaml")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    spec, elastic = job["spec"], job["spec"]["elasticPolicy"]
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == elastic["minReplicas"] == elastic["maxReplicas"]
    assert elastic["rdzvBackend"] == "c10d" and elastic["maxRestarts"] > 0
    assert worker["restartPolicy"] == "OnFailure" and spec["runPolicy"]["backoffLimit"] > 0
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch" and pod["terminationGracePeriodSeconds"] >= 60
    # what the operator sets for torchrun (PET_*: torchrun's flags from the environment)
    monkeypatch.setenv("PET_NNODES", f"{elastic['minReplicas']}:{elastic['maxReplicas']}")
    monkeypatch.setenv("PET_NPROC_PER_NODE", spec["nprocPerNode"])
    monkeypatch.setenv("PET_RDZV_BACKEND", elastic["rdzvBackend"])
    monkeypatch.setenv("PET_RDZV_ENDPOINT", f"{job['metadata']['name']}-worker-0:29400")
    monkeypatch.setenv("PET_MAX_RESTARTS", str(elastic["maxRestarts"]))
    args = torchrun_args(container["command"] + container.get("args", []))
    assert (args.nnodes, args.rdzv_backend, args.max_restarts) == ("2:2", "c10d", elastic["maxRestarts"])
    assert int(args.nproc_per_node) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in container["env"]
    check_train_argv(args.training_script_args, tmp_path)


def slurm_bin(tmp_path: Path, srun: str, first_node: str) -> Path:
    """Stand-ins for Slurm's srun and scontrol on PATH (scontrol requeue is written to scontrol.log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/sh\n{srun}\n")
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\nif [ "$1" = show ]; then echo {first_node}; echo node-b; exit 0; fi\n'
        f'echo "$@" >> {tmp_path / "scontrol.log"}\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


SBATCH = EXAMPLES / "slurm" / "train_multinode.sbatch"
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2"}


def test_multinode_sbatch_starts_one_torchrun_agent_per_node_at_a_c10d_rendezvous(tmp_path: Path) -> None:
    """What examples/slurm/train_multinode.sbatch hands srun: torchrun (its own parser reads it) at a c10d
    rendezvous on the job's first node, as many nodes as Slurm gave, running a `convnext train` that our CLI
    accepts. Finished (exit 0): not requeued."""
    bin_dir = slurm_bin(tmp_path, f'printf "%s\\n" "$@" > {tmp_path / "srun.args"}', "node-a")
    env = {**ENV, **SLURM_ENV, "SLURM_GPUS_ON_NODE": "8", "PATH": f"{bin_dir}:{ENV['PATH']}"}
    job = [
        "bash",
        str(SBATCH),
        "--config",
        "convnext_tiny_in1k",
        "data.root=/data/imagenet",
        "run.dir=/runs/t",
    ]
    r = subprocess.run(job, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (tmp_path / "scontrol.log").exists(), r.stderr
    args = torchrun_args((tmp_path / "srun.args").read_text().splitlines())
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "8", "c10d")
    assert (args.rdzv_endpoint, args.rdzv_id, args.max_restarts) == ("node-a:29500", "4242", 3)
    check_train_argv(args.training_script_args, tmp_path)


@pytest.mark.slow
def test_multinode_sbatch_saves_requeues_and_resumes_exactly(two_procs: Path, tmp_path: Path) -> None:
    """The whole Slurm story on one node of two processes: SIGUSR1 to the batch shell (--signal=B:USR1@120)
    mid-epoch; the ranks save and stop, the job is requeued; the requeued job resumes and ends as the
    uninterrupted run, bit for bit."""
    bin_dir = slurm_bin(tmp_path, 'exec "$@"', "127.0.0.1")
    env = {**ENV, **SLURM_ENV, "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "2", "RDZV_PORT": str(free_port())}
    env["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:{ENV['PATH']}"
    run_dir = tmp_path / "run"
    job = ["bash", str(SBATCH), *train_args(run_dir)[3:]]  # the script says `train`
    proc = subprocess.Popen(
        job,
        cwd=ROOT,
        env={**env, TEST_PAUSE_ENV: "step@3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while "".join(seen).count("paused at step@3") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is not None or "".join(seen).count("paused at step@3") < 2:
        proc.kill()
        pytest.fail("".join(seen)[-4000:])
    os.kill(proc.pid, signal.SIGUSR1)  # what Slurm sends the batch shell 120 s before the time limit
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(seen)
    assert proc.returncode != 0 and "requeueing job 4242" in out, out[-4000:]
    assert "SIGTERM received; saved" in out, out[-4000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert load_train_checkpoint(run_dir / "checkpoints" / "last.pth")["step"] == 3
    again = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # done: not requeued again
    assert "resuming" in again.stderr
    assert_same_run(two_procs, run_dir)
