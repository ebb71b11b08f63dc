"""Training throughput, MFU and peak memory of every backbone at the large size, on CUDA.

    .venv/bin/python -m experiments.benchmarks.gpu --quick --out gpu.json  # a few minutes
    .venv/bin/python -m experiments.benchmarks.gpu --out gpu.json          # every backbone compiled

Each registered backbone at `experiment=hybrid_large`'s size (depth 16, d_model 256, n_heads 8,
window 2048, the input width of `features=full`; the hybrid with that recipe's own backbone
settings, the others from their conf/backbone YAML) plus a linear head trains under bf16
autocast with TF32 on (as `hardware=h100` trains): one step = forward + MSE loss + backward +
AdamW step. Reported per backbone and mode (eager, and `torch.compile`d; with --quick only the
hybrid, the backbone of issue 11's MFU target, is also compiled, and fewer steps are timed):

- samples/s: batch / the median step time (after warm-up steps), and its ratio to the
  transformer in eager mode measured in the same run (and, compiled, to the same backbone eager);
- MFU: model FLOPs of one step (forward + backward matmuls, convolutions and attention, counted
  by `torch.utils.flop_counter.FlopCounterMode` on one eager step) / step time / the device's
  peak dense bf16 tensor FLOP/s from `PEAK_BF16` (by device name; unknown device: no MFU);
- peak memory: `torch.cuda.max_memory_allocated` over the timed steps (weights, gradients,
  AdamW state, activations).

Results go to docs/benchmarks.md (section `gpu`) and, with --out, to a JSON file. Without CUDA
the script prints why it skipped, writes only the --out JSON (`{"skipped": ...}`), leaves
docs/benchmarks.md alone and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.benchmarks._report import machine, write_section

REFERENCE = "transformer"  # samples/s ratios are against this backbone, eager, same run
HORIZON = 5  # outputs of the linear head (the recipe's horizon)

# Peak dense (non-sparse) bf16 tensor-core FLOP/s with fp32 accumulation, by device name; the
# first pattern that matches torch.cuda.get_device_name() wins (specific names first).
# Sources: NVIDIA H100 datasheet (SXM 989.4, PCIe 756, NVL 835 TFLOPS: half the "with
# sparsity" figures); H200 datasheet (SXM 989, NVL 835); A100 datasheet (312); L40S datasheet
# (362); L4 datasheet (121); A10 datasheet (125); Ada Lovelace whitepaper, RTX 4090: 165.2
# (fp32 accumulate); Ampere GA102 whitepaper, RTX 3090: 71.
PEAK_BF16: list[tuple[str, float]] = [
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100", 989.4e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"H200.*NVL", 835e12),
    (r"H200", 989e12),  # SXM
    (r"A100", 312e12),
    (r"L40S", 362e12),
    (r"L4\b", 121e12),
    (r"A10\b", 125e12),
    (r"RTX 4090", 165.2e12),
    (r"RTX 3090", 71e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """The device's peak dense bf16 FLOP/s from `PEAK_BF16`, or None for an unknown device."""
    for pattern, flops in PEAK_BF16:
        if re.search(pattern, device_name):
            return flops
    return None


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of `step` (matmuls, convolutions, attention; forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def mfu(flops_per_step: float, seconds_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the peak (None if unknown)."""
    if peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def large_size() -> dict:
    """experiment=hybrid_large's sizes and input width, and each backbone's config at them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from plusultra.data.features.pipeline import REGISTRY
    from plusultra.models.backbones import BACKBONES
    from plusultra.run import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        large = compose("config", overrides=["experiment=hybrid_large"])
        size = [f"{k}={large[k]}" for k in ("depth", "d_model", "n_heads", "window")]
        configs = {
            name: large.backbone
            if name == "hybrid"  # the recipe's own patching, dilations, drop path
            else compose("config", overrides=[f"backbone={name}", *size]).backbone
            for name in BACKBONES
        }
    n_features = len(REGISTRY) + len(large.features.indicators) + len(large.features.regimes)
    return {
        "window": int(large.window),
        "n_features": n_features,
        "configs": {k: OmegaConf.to_container(v, resolve=True) for k, v in configs.items()},
        "size": size,
    }


def measure(
    name: str,
    config: dict,
    window: int,
    n_features: int,
    batch: int,
    compiled: bool,
    steps: int,
    device: str = "cuda",
) -> dict:
    """Warm up, then time `steps` training steps of one backbone; FLOPs from one eager step.
    (`device` other than CUDA: the same code for a smoke test, without memory figures.)"""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    backbone = instantiate(config, n_features=n_features, _convert_="all").to(device)
    head = torch.nn.Linear(backbone.d_out, HORIZON).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return head(backbone(x)[:, -1])  # (B, T', D) -> last token -> (B, H)

    run = torch.compile(forward) if compiled else forward
    x = torch.randn(batch, window, n_features, device=device)
    y = torch.randn(batch, HORIZON, device=device)

    def step(fn=run) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(fn(x).float(), y)
            loss = loss + getattr(backbone, "aux_loss", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flops = count_flops(lambda: step(forward))  # eager: the same math, counted op by op
    for _ in range(3 if compiled else 2):  # compiled: the first calls compile
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "backbone": name,
        "mode": "compiled" if compiled else "eager",
        "batch": batch,
        "params": sum(p.numel() for p in backbone.parameters()),
        "tokens": backbone.n_tokens(window),
        "step_ms": seconds * 1e3,
        "samples_per_s": batch / seconds,
        "flops_per_step": flops,
        "tflops_per_s": flops / seconds / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def measure_or_shrink(name: str, size: dict, batch: int, compiled: bool, steps: int) -> dict:
    """`measure`, halving the batch on out-of-memory (down to batch/4); any other failure (a
    compile error, say) becomes a row that names it, so one backbone cannot sink the run."""
    mode = "compiled" if compiled else "eager"
    status = f"OOM down to batch {batch // 4}"
    for b in (batch, batch // 2, batch // 4):
        try:
            row = measure(
                name, size["configs"][name], size["window"], size["n_features"], b, compiled, steps
            )
            return row | {"status": "ok" if b == batch else f"ok at batch {b} (OOM at {batch})"}
        except torch.cuda.OutOfMemoryError:
            continue
        except Exception as exc:  # noqa: BLE001 - reported in the row and the table
            status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
            torch._dynamo.reset()
    return {"backbone": name, "mode": mode, "batch": batch, "status": status}


HEADER = (
    f"| backbone | mode | batch | samples/s | vs {REFERENCE} | vs eager | ms/step | TFLOP/s | MFU "
    "| peak memory (GiB) | status |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def memory(gib: float | None) -> str:
    return "n/a" if gib is None else f"{gib:.2f}"


def markdown(rows: list[dict], device: str, peak: float | None, steps: int, size: dict) -> str:
    ok = [r for r in rows if "samples_per_s" in r]
    ref = next((r for r in ok if (r["backbone"], r["mode"]) == (REFERENCE, "eager")), None)
    eager = {r["backbone"]: r for r in ok if r["mode"] == "eager"}
    lines = []
    for r in rows:
        if "samples_per_s" not in r:
            lines.append(
                f"| {r['backbone']} | {r['mode']} | {r['batch']} |{' - |' * 7} {r['status']} |"
            )
            continue
        vs_ref = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-"
        base = eager.get(r["backbone"])
        vs_eager = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        util = mfu(r["flops_per_step"], r["step_ms"] / 1e3, peak)
        lines.append(
            f"| {r['backbone']} | {r['mode']} | {r['batch']} | {r['samples_per_s']:.1f} | "
            f"{vs_ref} | {vs_eager} | {r['step_ms']:.1f} | {r['tflops_per_s']:.1f} | "
            + (f"{util:.1%}" if util is not None else "n/a")
            + f" | {memory(r['peak_memory_gib'])} | {r['status']} |"
        )
    hybrid = [r for r in ok if r["backbone"] == "hybrid"]
    best = max(hybrid, key=lambda r: r["samples_per_s"], default=None)
    if peak is None:
        verdict = f"MFU omitted: no peak bf16 FLOP/s known for {device!r} (`PEAK_BF16`)."
    elif best is None:
        verdict = "The hybrid did not run (see its row)."
    else:
        util = mfu(best["flops_per_step"], best["step_ms"] / 1e3, peak)
        verdict = (
            f"Issue 11's target (the 16-block hybrid >= 40% MFU in bf16 on an H100-class GPU): "
            f"{util:.1%} ({best['mode']}) on this {device}: "
            f"{'met' if util >= 0.4 else 'NOT met'}."
        )
    peak_text = f"{peak / 1e12:.1f} TFLOP/s" if peak else "unknown"
    return f"""## GPU: training throughput, MFU and memory at the large size

`python -m experiments.benchmarks.gpu` — {device} (peak dense bf16 {peak_text}), {machine()}

Each backbone at `experiment=hybrid_large`'s size ({", ".join(size["size"])},
{size["n_features"]} input features; the hybrid with the recipe's patching) + a linear head,
bf16 autocast, TF32, AdamW; one step = forward + backward + optimiser step, median of {steps}
timed steps after warm-up. FLOPs per step are counted by `FlopCounterMode` on one eager step
(matmuls, convolutions and attention, forward and backward; causal attention is counted as
full, elementwise ops and the optimiser are not); MFU = those FLOPs / step time / the peak.
"vs {REFERENCE}" is against the eager transformer of this run, "vs eager" the same backbone
uncompiled. Memory is `torch.cuda.max_memory_allocated` during the timed steps.

{verdict}

{HEADER}
{chr(10).join(lines)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="compile the hybrid only; 5 timed steps"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--batch", type=int, default=32, help="windows per step (default 32)")
    parser.add_argument("--backbones", help="comma-separated subset (default: every backbone)")
    args = parser.parse_args(argv)

    def dump(payload: dict) -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(payload, indent=2))

    if not torch.cuda.is_available():
        reason = (
            f"no CUDA device (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none: the CPU build, see docs/hardware.md'})"
        )
        print(f"experiments.benchmarks.gpu: skipped: {reason}; docs/benchmarks.md unchanged")
        dump({"skipped": reason})
        return 0

    from plusultra.training.device import set_matmul_precision

    set_matmul_precision("high")  # TF32, as hardware=rtx4090|h100
    size = large_size()
    names = args.backbones.split(",") if args.backbones else list(size["configs"])
    unknown = sorted(set(names) - set(size["configs"]))
    if unknown:
        parser.error(f"unknown backbone(s) {unknown}; valid: {', '.join(size['configs'])}")
    compile_too = {"hybrid"} if args.quick else set(names)  # compiling 16 blocks takes a while
    steps = 5 if args.quick else 15
    device = torch.cuda.get_device_name()
    peak = peak_bf16_flops(device)
    if peak is None:
        print(f"MFU omitted: no peak bf16 FLOP/s known for {device!r} (PEAK_BF16)")
    rows = []
    for name in names:
        for compiled in (False, True) if name in compile_too else (False,):
            row = measure_or_shrink(name, size, args.batch, compiled, steps)
            if "step_ms" in row:
                row["mfu"] = mfu(row["flops_per_step"], row["step_ms"] / 1e3, peak)
            print(json.dumps(row), flush=True)
            rows.append(row)
            dump({"device": device, "peak_bf16_flops": peak, "steps": steps, "rows": rows})
    md = markdown(rows, device, peak, steps, size)
    print(md)
    write_section("gpu", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
