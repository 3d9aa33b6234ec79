"""bf16 on CPU: what the hardware gives, and our bf16 paths against fp32, autocast and the peers, interleaved.

    .venv/bin/python benchmarks/bf16_paths.py peak                                # 2048^3 GEMM fp32 vs bf16
    .venv/bin/python benchmarks/bf16_paths.py block --mode infer --rounds 9       # one block, per C and rows
    .venv/bin/python benchmarks/bf16_paths.py model --batch-sizes 1 32 --rounds 7 # ConvNeXt-T, whole model
    .venv/bin/python benchmarks/bf16_paths.py model --mode train --batch-sizes 32 --rounds 5

``block``: a block of width C on an (N, C, S, S) channels_last map, S its stage's side in ConvNeXt at 224 px
(56, 28, 14, 7 for C = 96, 192, 384, 768), rows = N S^2, under CPU bf16 autocast, as the plain
``Block`` (what autocast does to the reference), as ``ChunkedBlock`` forced onto its bf16 loop (per-call
weight casts, as in ``create_model``'s model) and as ``FusedBlock`` (weights cast once,
``fuse_for_inference(dtype=torch.bfloat16)``); ratio = autocast time / contestant time (> 1: faster).
Where ``MIN_ROWS_BF16_*`` in ``chunked_mlp.py`` come from.

``model``: contestants (same weights: random layer scales and biases; all in one process, round-robin, one
call each per round; median ms and the median of per-round ratios):
``fp32`` (our fastest fp32: ``fuse_for_inference``, or in train mode ``create_model``'s model),
``ac-plain`` (the reference model under autocast), ``ac-ours`` (``create_model``'s model under autocast: its
bf16 loop), ``bf16-fused`` (``fuse_for_inference(dtype=torch.bfloat16)``, infer only), ``bf16-cast`` (the
reference model cast to bf16 whole, residual stream included; infer only), ``ac-timm`` and
``ac-torchvision`` (the peers under autocast, channels_last as ours). Train mode: forward, cross-entropy,
backward and a fused AdamW step, autocast around the forward and the loss.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import convnext.models.chunked_mlp as cm
from convnext.models import Block, fuse_for_inference, set_chunked_mlp
from convnext.models.fuse import FusedBlock

BF16 = torch.bfloat16


def _interleave(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    for f in steps.values():  # warm-up
        f()
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(rounds):
        for n, f in steps.items():
            start = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - start)
    return times


def _ratio(times: dict[str, list[float]], ref: str, name: str) -> float:
    return statistics.median(a / b for a, b in zip(times[ref], times[name], strict=True))


def peak(args: argparse.Namespace) -> None:
    n = args.size
    a, b = torch.randn(n, n), torch.randn(n, n)
    ab, bb = a.to(BF16), b.to(BF16)
    times = _interleave({"fp32": lambda: a @ b, "bf16": lambda: ab @ bb}, args.rounds)
    flop = 2 * n**3
    for k in times:
        print(f"{k}: {flop / statistics.median(times[k]) / 1e9:.0f} GFLOP/s")
    print(f"bf16 / fp32 = {_ratio(times, 'fp32', 'bf16'):.2f}x (median of per-round ratios)")


def block(args: argparse.Namespace) -> None:
    cm.MIN_ROWS_BF16_TRAIN = cm.MIN_ROWS_BF16_INFER = 0
    torch.manual_seed(0)
    print(
        f"mode {args.mode}, {torch.get_num_threads()} threads; ratio = autocast plain time / contestant time"
    )
    print(f"{'C':>5} {'N':>4} {'rows':>7} {'autocast ms':>12} {'ours x':>7} {'fused x':>8}")
    for dim in args.dims:
        plain = Block(dim, layer_scale_init_value=0.5)
        ours = set_chunked_mlp(copy.deepcopy(plain), True)
        fused = copy.deepcopy(ours).requires_grad_(False)
        fused.__class__ = FusedBlock
        side = {96: 56, 192: 28, 384: 14, 768: 7}.get(dim, 14)
        for n in args.batches:
            rows = n * side * side
            if rows * dim > args.max_elements:
                continue
            x = torch.randn(n, dim, side, side).contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(x)

            def run(b: nn.Module, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
                if args.mode == "infer":
                    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
                        b(x)
                else:
                    with torch.autocast("cpu", dtype=BF16):
                        out = b(x.requires_grad_())
                    out.backward(g)

            steps = {"autocast": lambda b=plain: run(b), "ours": lambda b=ours: run(b)}
            if args.mode == "infer":
                steps["fused"] = lambda b=fused: run(b)
            times = _interleave(steps, args.rounds)
            fx = f"{_ratio(times, 'autocast', 'fused'):8.2f}" if "fused" in times else f"{'-':>8}"
            print(
                f"{dim:>5} {n:>4} {rows:>7} {statistics.median(times['autocast']) * 1e3:>12.2f} "
                f"{_ratio(times, 'autocast', 'ours'):>7.2f} {fx}",
                flush=True,
            )


def model(args: argparse.Namespace) -> None:
    import timm
    import torchvision

    from convnext.bench.models import build_ours
    from convnext.bench.peers import to_peer_state_dict
    from convnext.models import get_variant

    torch.manual_seed(0)
    ours = build_ours(args.model, get_variant(args.model), torch.device("cpu"))  # off-init gains, biases
    plain = set_chunked_mlp(copy.deepcopy(ours), False)
    models: dict[str, nn.Module] = {"ac-plain": plain, "ac-ours": ours}
    if "ac-timm" in args.contestants:
        models["ac-timm"] = timm.create_model(args.model, num_classes=plain.num_classes)
    if "ac-torchvision" in args.contestants:
        models["ac-torchvision"] = getattr(torchvision.models, args.model)()
    for peer in ("ac-timm", "ac-torchvision"):
        if peer in models:
            kind = peer.split("-")[1]
            models[peer].load_state_dict(
                to_peer_state_dict(plain.state_dict(), kind, models[peer]), strict=True
            )
            models[peer] = models[peer].to(memory_format=torch.channels_last)
    if args.mode == "infer":
        models["fp32"] = fuse_for_inference(plain)
        models["bf16-fused"] = fuse_for_inference(plain, dtype=BF16)
        models["bf16-cast"] = copy.deepcopy(plain).to(BF16)
    else:
        models["fp32"] = copy.deepcopy(ours)
    names = [n for n in args.contestants if n in models]
    threads = torch.get_num_threads()
    print(f"{args.model} {args.mode}, {args.img_size} px, {threads} threads, {args.rounds} rounds")
    print(f"ms per call (median); x {args.ref} = median [range] of per-round ratios {args.ref} / contestant")
    for bs in args.batch_sizes:
        x = torch.randn(bs, 3, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, plain.num_classes, (bs,))
        steps: dict[str, Callable[[], object]] = {}
        for n in names:
            m = models[n].train(args.mode == "train")
            amp = n.startswith("ac-")
            if args.mode == "infer":
                xin = x.to(BF16) if n == "bf16-cast" else x

                def infer(m: nn.Module = m, xin: torch.Tensor = xin, amp: bool = amp) -> object:
                    with torch.inference_mode(), torch.autocast("cpu", dtype=BF16, enabled=amp):
                        return m(xin)

                steps[n] = infer
            else:
                opt = torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True)

                def step(
                    m: nn.Module = m,
                    opt: torch.optim.Optimizer = opt,
                    amp: bool = amp,
                    x: torch.Tensor = x,
                    y: torch.Tensor = y,
                ) -> None:
                    with torch.autocast("cpu", dtype=BF16, enabled=amp):
                        loss = F.cross_entropy(m(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                steps[n] = step
        if args.mode == "infer":
            ref = plain.eval()(x).detach()
            diffs = {n: (steps[n]().float() - ref).abs().max().item() / ref.abs().max().item() for n in names}
        times = _interleave(steps, args.rounds)
        print(f"batch {bs}:")
        for n in names:
            med = statistics.median(times[n])
            line = f"  {n:15s} {med * 1e3:9.1f} ms {bs / med:8.2f} img/s"
            if args.ref in times:
                per_round = sorted(a / b for a, b in zip(times[args.ref], times[n], strict=True))
                spread = f"[{per_round[0]:.2f}-{per_round[-1]:.2f}]"
                line += f"  x {args.ref} {_ratio(times, args.ref, n):5.2f} {spread}"
            line += f"  x fp32 {_ratio(times, 'fp32', n):5.2f}" if "fp32" in times else ""
            line += f"  rel diff {diffs[n]:.1e}" if args.mode == "infer" else ""
            print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["peak", "block", "model"])
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--size", type=int, default=2048, help="peak: the GEMM's n")
    p.add_argument("--dims", type=int, nargs="+", default=[96, 192, 384, 768])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="block: N")
    p.add_argument("--max-elements", type=float, default=1e7, help="block: skip shapes above rows x C")
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--ref", default="ac-timm", help="model: the contestant ratios are taken against")
    p.add_argument(
        "--contestants",
        nargs="+",
        default=["fp32", "ac-plain", "ac-ours", "bf16-fused", "bf16-cast", "ac-timm", "ac-torchvision"],
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"peak": peak, "block": block, "model": model}[args.what](args)


if __name__ == "__main__":
    main()
