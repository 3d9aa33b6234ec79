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
        f"{'ours x':>8}{'rounds':>11}{'lat x':>7}{'rounds':>11}",
    ]
    for res in r["results"]:
        lat = f"{res['latency_ms']:.1f}" if res["latency_ms"] is not None else "-"
        sp, sp_range = _ratio(res, "ours_speedup")
        lsp, lsp_range = _ratio(res, "ours_latency_speedup")
        lines.append(
            f"{res['name']:<12}{res['images_per_s']:>10.2f}{lat:>12}{res['peak_memory_mb']:>10.0f}"
            f"{100 * res['fraction_of_matmul_peak']:>9.0f}%"
            f"{res['max_abs_diff_vs_ours']:>11.1e}{sp:>8}{sp_range:>11}{lsp:>7}{lsp_range:>11}"
        )
    lines.append(f"ours: {r['results'][0]['note']}")
    lines.append(
        "'ours x' = the peer's median time / ours (our images/s / theirs); 'lat x' the same at batch 1; "
        "'rounds' the lowest-highest per-round ratio. "
        f"Memory: {r['memory_method']}. "
        + ("FLOPs: 2 x MACs x 3 (forward + backward)." if r["mode"] == "train" else "FLOPs: 2 x MACs.")
    )
    lines += [f"note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def _ratio(res: dict[str, Any], key: str) -> tuple[str, str]:
    """A ratio and its per-round range as printed, or dashes where the row has none (ours)."""
    if res.get(key) is None:
        return "-", ""
    lo, hi = res[f"{key}_range"]
    return f"{res[key]:.2f}", f"{lo:.2f}-{hi:.2f}"


def format_backend_report(report: dict[str, Any]) -> str:
    """The human table: one row per backend, ratios against our fp32 PyTorch."""
    r = report
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    lines = [
        f"{r['model']} ({r['weights']}), batch {r['batch_size']}, {r['img_size']}px, {r['device_name']}, "
        f"{r['threads']} threads; {versions}",
        f"CPU: {r['cpu_features_line']}; fp32 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s; "
        f"median of {r['repeats']} interleaved rounds",
        f"{'backend':<15}{'images/s':>10}{'batch-1 ms':>12}{'x torch':>9}{'rounds':>11}{'lat x':>7}"
        f"{'rounds':>11}{'rel diff':>10}  ran as",
    ]
    for res in r["results"]:
        lat = f"{res['latency_ms']:.1f}" if res["latency_ms"] is not None else "-"
        sp, sp_range = _ratio(res, "speedup_vs_torch")
        lsp, lsp_range = _ratio(res, "latency_speedup_vs_torch")
        lines.append(
            f"{res['backend']:<15}{res['images_per_s']:>10.2f}{lat:>12}{sp:>9}{sp_range:>11}{lsp:>7}"
            f"{lsp_range:>11}{res['max_rel_diff_vs_torch']:>10.1e}  {res['precision']}"
        )
    lines.append(
        "'x torch' = torch's median time / the backend's (its images/s over torch's), torch = our fused "
        "fp32 PyTorch; 'lat x' the same at batch 1; 'rounds' the lowest-highest per-round ratio; "
        "'rel diff' = max |logits - plain fp32 PyTorch| / max |logits|."
    )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
