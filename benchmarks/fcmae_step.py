"""Time an FCMAE pre-training step against a plain ConvNeXt V2 step of one encoder and batch, interleaved.

    .venv/bin/python benchmarks/fcmae_step.py --model convnextv2_atto --batch-size 16 --rounds 7
    .venv/bin/python benchmarks/fcmae_step.py --model convnextv2_tiny --batch-size 8 --rounds 5 --profile

Variants, each a forward + backward (no optimizer step, gradients set to None before each):

* ``plain``: the classification model (``build_model``, as ``convnext train`` runs it), cross-entropy.
* ``fcmae``: ``FCMAE(imgs, mask_ratio=0.6)``: masked encoder, decoder, loss (the pre-training step).
* ``masked-encoder``: ``FCMAE.forward_encoder`` alone (sum of its output): the masking's own cost.

One process, one round-robin per round (the order reversed every other round) so that noise from other
processes hits every variant alike; prints the median time of each and the median of the per-round ratios
to ``plain``. ``--profile`` adds torch.profiler's table of one step of each (self CPU time by op), to say
where the time goes.
BENCHMARKS.md, "FCMAE pre-training step", quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from convnext.models import build_model, create_fcmae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnextv2_atto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--mask-ratio", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared CPU, 1 thread spares the barrier waits

    torch.manual_seed(0)
    fcmae = create_fcmae(f"fcmae_{args.model}", img_size=args.img_size).train()
    plain = build_model(args.model, num_classes=1000).train()  # chunked_mlp as training builds it
    missing, _ = plain.load_state_dict(fcmae.encoder.state_dict(), strict=False)
    assert all(k.startswith(("norm.", "head.")) for k in missing)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch_size,))
    gen = torch.Generator().manual_seed(0)
    mask = fcmae.gen_random_mask(x, args.mask_ratio, gen)

    def zero() -> None:
        for m in (fcmae, plain):
            m.zero_grad(set_to_none=True)

    def step_plain() -> None:
        F.cross_entropy(plain(x), y).backward()

    def step_fcmae() -> None:
        fcmae(x, mask_ratio=args.mask_ratio, generator=gen).loss.backward()

    def step_encoder() -> None:
        fcmae.forward_encoder(x, mask).sum().backward()

    variants: dict[str, Callable[[], None]] = {
        "plain": step_plain,
        "fcmae": step_fcmae,
        "masked-encoder": step_encoder,
    }
    for f in variants.values():  # warm-up: allocator, oneDNN primitives
        zero()
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        order = list(variants.items())
        for name, f in order if r % 2 == 0 else order[::-1]:  # alternate, so that drift hits all alike
            zero()
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    print(
        f"{args.model}, batch {args.batch_size}, {args.img_size} px, mask {args.mask_ratio}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times["plain"])]
        spread = f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        ms, ratio = statistics.median(ts) * 1e3, statistics.median(ratios)
        print(f"  {name:15s} median {ms:8.1f} ms   x plain: {ratio:.3f} {spread}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, f in variants.items():
            zero()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                f()
            print(f"\n== {name}: self CPU time by op")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
