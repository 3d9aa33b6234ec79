"""The human tables of the benchmark reports (the reports themselves are plain data, for --json)."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """The human table: one row per contestant, speed-ups of ours over each peer."""
    r = report
    lines = [
        f"{r['model']} {r['mode']}, batch {r['batch_size']}, {r['img_size']}px, {r['device_name']}, "
        f"{r['threads']} threads, torch {r['torch']}"
        + (", channels_last" if r["channels_last"] else "")
        + (", compiled" if r["compile"] else "")
        + (f", amp {r['amp']}" if r["amp"] else "")
        + (", malloc tuned" if r.get("malloc") == "tuned" else ""),
        f"params {r['params_m']:.1f}M, {r['gmacs']:.2f} GMACs/image; matmul peak "
        f"{r['matmul_peak_gflops']:.0f} GFLOP/s ({r['matmul_peak_dtype']}); "
        f"median of {r['repeats']} interleaved rounds",
        f"{'':<12}{'images/s':>10}{'batch-1 ms':>12}{'peak MiB':>10}{'% of peak':>10}{'max|diff|':>11}"
        f"{'ours x':>8}{'lat x':>7}",
    ]
    for res in r["results"]:
        lat = f"{res['latency_ms']:.1f}" if res["latency_ms"] is not None else "-"
        sp = f"{res['ours_speedup']:.2f}" if "ours_speedup" in res else "-"
        lsp = f"{res['ours_latency_speedup']:.2f}" if "ours_latency_speedup" in res else "-"
        lines.append(
            f"{res['name']:<12}{res['images_per_s']:>10.2f}{lat:>12}{res['peak_memory_mb']:>10.0f}"
            f"{100 * res['fraction_of_matmul_peak']:>9.0f}%"
            f"{res['max_abs_diff_vs_ours']:>11.1e}{sp:>8}{lsp:>7}"
        )
    lines.append(f"ours: {r['results'][0]['note']}")
    lines.append(
        "'ours x' = median over rounds of (peer time / our time); 'lat x' the same at batch 1. "
        f"Memory: {r['memory_method']}. "
        + ("FLOPs: 2 x MACs x 3 (forward + backward)." if r["mode"] == "train" else "FLOPs: 2 x MACs.")
    )
    return "\n".join(lines)


def format_backend_report(report: dict[str, Any]) -> str:
    """The human table: one row per backend, ratios against our fp32 PyTorch."""
    r = report
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    lines = [
        f"{r['model']} ({r['weights']}), batch {r['batch_size']}, {r['img_size']}px, {r['device_name']}, "
        f"{r['threads']} threads; {versions}",
        f"CPU: {r['cpu_features_line']}; fp32 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s; "
        f"median of {r['repeats']} interleaved rounds",
        f"{'backend':<15}{'images/s':>10}{'batch-1 ms':>12}{'x torch':>9}{'lat x':>7}{'rel diff':>10}"
        "  ran as",
    ]
    for res in r["results"]:
        lat = f"{res['latency_ms']:.1f}" if res["latency_ms"] is not None else "-"
        lsp = f"{res['latency_speedup_vs_torch']:.2f}" if res["latency_speedup_vs_torch"] is not None else "-"
        lines.append(
            f"{res['backend']:<15}{res['images_per_s']:>10.2f}{lat:>12}{res['speedup_vs_torch']:>9.2f}"
            f"{lsp:>7}{res['max_rel_diff_vs_torch']:>10.1e}  {res['precision']}"
        )
    lines.append(
        "'x torch' = median over rounds of (torch time / backend time), torch = our fused fp32 PyTorch; "
        "'lat x' the same at batch 1; 'rel diff' = max |logits - plain fp32 PyTorch| / max |logits|."
    )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
