"""Estimated training memory of every backbone at the hybrid_large size, with and without
activation checkpointing, and the batch sizes that fit 24 GB and 80 GB.

    .venv/bin/python -m experiments.benchmarks.memory [--precision bf16-mixed] [--dry-run]

Each backbone is built at the size of ``experiment=hybrid_large`` (depth 16, d_model 256,
8 heads, window 2048, its features=full inputs; the hybrid with the recipe's patching and
dilations, the others with their own defaults) and estimated by `plusultra.models.memory`
(fake tensors: nothing is allocated, no GPU needed). The budgets are 90% (``HEADROOM``) of
24 GiB (RTX 4090) and 80 GiB (H100), as the run's check uses them. Where a CUDA device is
present, ``--measure`` also trains one step of each backbone at a small batch on it and reports
``torch.cuda.max_memory_allocated`` beside the estimate of that batch.
"""

from __future__ import annotations

import argparse
import textwrap

from experiments.benchmarks._report import machine, write_section

BACKBONES = ("hybrid", "transformer", "tcn", "ssm", "moe", "multiscale")
SIZE = ["depth=16", "n_heads=8", "d_model=256", "window=2048", "horizon=5", "features=full"]
DEVICES = {"rtx4090": 24, "h100": 80}  # hardware option -> GiB


def build(backbone: str):
    """(backbone, head, window, n_features, hardware batch sizes) at the hybrid_large size."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from plusultra.data.features.pipeline import REGISTRY
    from plusultra.run import CONF_DIR

    overrides = ["experiment=hybrid_large"] if backbone == "hybrid" else [f"backbone={backbone}"]
    batches = {}
    for hw in DEVICES:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, *SIZE, f"hardware={hw}"])
        batches[hw] = cfg.data.batch_size
    n_features = len(REGISTRY) + len(cfg.features.indicators) + len(cfg.features.regimes)
    model = instantiate(cfg.backbone, n_features=n_features, _convert_="all")
    head = instantiate(cfg.head, _convert_="all")
    return model, head, cfg.window, n_features, batches


def measure_cuda(model, head, window: int, n_features: int, batch: int, precision: str) -> int:
    """Peak bytes allocated by one AdamW training step on the current CUDA device."""
    import torch

    from plusultra.models.memory import PRECISIONS

    dtype, autocast = PRECISIONS[precision]
    net = torch.nn.Sequential(model, head).to("cuda", dtype).train()
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(batch, window, n_features, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=autocast or dtype, enabled=autocast is not None):
        loss = net(x).float().square().mean()
    loss.backward()
    opt.step()  # creates the two moments
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del net, opt, x, loss
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    from plusultra.models.memory import GIB, HEADROOM, estimate_memory

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16-mixed", help="trainer.precision estimated")
    parser.add_argument("--measure", type=int, default=0, help="CUDA: also train a step at N")
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    rows, checks = [], []
    for name in BACKBONES:
        model, head, window, n_features, batches = build(name)
        est = estimate_memory(model, head, window, n_features, 1, args.precision)
        mib = 1024**2
        row = [
            name,
            f"{est.n_params / 1e6:.1f}",
            f"{est.state / GIB:.2f}",
            f"{est.plain.per_sample / mib:.1f} / {est.checkpointed.per_sample / mib:.1f}",
        ]
        for hw in DEVICES:
            b = batches[hw]
            row.append(f"{est.total(False, b) / GIB:.1f} / {est.total(True, b) / GIB:.1f} ({b})")
        for gib in DEVICES.values():
            budget = HEADROOM * gib * GIB
            row.append(f"{est.max_batch(budget, False)} / {est.max_batch(budget, True)}")
        rows.append("| " + " | ".join(row) + " |")
        print(rows[-1], flush=True)
        if args.measure:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("--measure needs a CUDA device")
            b = args.measure
            peak = measure_cuda(model, head, window, n_features, b, args.precision)
            checks.append(
                f"| {name} | {b} | {est.total(False, b) / GIB:.2f} | {peak / GIB:.2f} | "
                f"{torch.cuda.get_device_name()} |"
            )
            print(checks[-1], flush=True)
    header = (
        "| backbone | params (M) | params + AdamW (GiB) | activations / sample (MiB), plain / "
        "checkpointed | estimate at the rtx4090 batch (GiB), plain / checkpointed (batch) | "
        "estimate at the h100 batch (GiB) | largest batch in 24 GB, plain / checkpointed | "
        "largest batch in 80 GB |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    intro = (
        "`python -m experiments.benchmarks.memory`: estimates, not measurements "
        '(`plusultra.models.memory` on fake tensors, the method in docs/models.md, "Memory and '
        f'activation checkpointing"). Precision {args.precision}, window 2048, depth 16, '
        "d_model 256, 8 heads, the features=full inputs; the hybrid with the recipe's patches "
        "(16 bars, stride 8: 255 tokens), the others one token per bar. Budgets: "
        f"{HEADROOM:.0%} of 24 and 80 GiB. The batch in brackets is conf/hardware/rtx4090.yaml's "
        "and h100.yaml's, sized for the hybrid without checkpointing; a backbone whose estimate "
        "exceeds the budget there needs checkpointing or a smaller batch, as the run's check "
        "says when it refuses. "
        f"Estimated on {machine()}."
    )
    text = (
        "## Training memory at the hybrid_large size\n\n"
        + textwrap.fill(intro, 100, break_on_hyphens=False)
        + f"\n\n{header}\n"
        + "\n".join(rows)
        + "\n"
    )
    if checks:
        text += (
            "\nMeasured on CUDA (one AdamW step, `torch.cuda.max_memory_allocated`):\n\n"
            "| backbone | batch | estimate (GiB) | measured peak (GiB) | device |\n"
            "|---|---:|---:|---:|---|\n" + "\n".join(checks) + "\n"
        )
    if args.dry_run:
        print(text)
    else:
        print(f"wrote {write_section('memory', text)}")


if __name__ == "__main__":
    main()
