"""`plusultra-serve` latency and load: one window per request, then rising concurrency.

    .venv/bin/python -m experiments.benchmarks.service [--seconds 60] [--levels 1,2,4,8,16]

Builds a run at the default (CPU) model size: the default experiment (hybrid backbone,
d_model 64, depth 4, window 64) on a generated database of 16 symbols x 1260 days, trained for
a few batches (latency does not depend on how well it is trained). Serves it with the real
command (`python -m plusultra.cli.serve RUN --port P`, a subprocess on loopback) and:

1. single-request latency: ``--requests`` sequential ``POST /predict {"symbols": [one]}``
   (one window: the symbols path, cached features, one forward pass) from one httpx client;
   client-side wall time p50 / p99, the model's forward pass and the whole decision from each
   response's ``Server-Timing`` header (``model;dur=``, ``predict;dur=``), shown separately,
   and, interleaved, ``GET /health`` as the reference: the HTTP floor of the same server;
   the same again on a second server started with ``--compile``;
2. throughput: an asyncio + httpx load generator with a bounded number of workers (the
   concurrency; each sends its next request when the previous answered) for ``--seconds`` per
   level; requests per second, p50 / p99 latency, errors (any non-200 or transport error), and
   the server's resident memory (VmRSS from /proc) at the start and end of each level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.benchmarks._report import machine, write_section

REPO = Path(__file__).resolve().parents[2]


def build_run(workdir: Path) -> Path:
    """A finished default-size run on a generated database (trained for a few batches)."""
    from plusultra.data.io.fixture import generate_fixture

    db = generate_fixture(workdir / "bench.sqlite", 16, 1260, seed=7)
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(workdir / "out")}
    overrides = [
        "data=sqlite", f"data.path={db}", "trainer.max_epochs=1", "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0", "evaluation.bootstrap=0",
        "trainer.enable_progress_bar=false", "print_summary=false",
    ]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "plusultra.run", *overrides],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return next((workdir / "out" / "runs").glob("*/*"))


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timings(header: str) -> dict[str, float]:
    """``Server-Timing`` metrics (``model;dur=1.2, predict;dur=3.4``) as name -> ms."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def single(url: str, body: dict, n: int) -> dict[str, float]:
    """p50/p99 (ms) of sequential requests, interleaved: ``POST /predict`` end to end (client
    wall), its model pass and its whole decision (``Server-Timing``), and ``GET /health``
    end to end (the HTTP floor of the same server: routing, threadpool, JSON, loopback)."""
    import httpx

    wall, model, decide, floor = [], [], [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):  # warm the connection and the server's code paths
            client.post("/predict", json=body).raise_for_status()
            client.get("/health").raise_for_status()
        for _ in range(n):
            start = time.perf_counter()
            r = client.post("/predict", json=body)
            wall.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
            t = timings(r.headers["server-timing"])
            model.append(t["model"])
            decide.append(t["predict"])
            start = time.perf_counter()
            client.get("/health").raise_for_status()
            floor.append((time.perf_counter() - start) * 1000)
    out = {}
    for name, values in (("", wall), ("model_", model), ("predict_", decide), ("health_", floor)):
        out[name + "p50"], out[name + "p99"] = pct(values, 0.5), pct(values, 0.99)
    return out


async def load(url: str, body: dict, workers: int, seconds: float) -> dict[str, float]:
    """`workers` concurrent request loops for `seconds`: rate, latency, errors."""
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - begin
    return {
        "rps": len(latencies) / elapsed, "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99), "errors": errors, "requests": len(latencies),
    }  # fmt: skip


def serve(run_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "plusultra.cli.serve", str(run_dir), "--port", str(port),
         "--log-level", "warning", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"plusultra-serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("plusultra-serve did not answer /health in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="seconds per load level")
    parser.add_argument("--levels", default="1,2,4,8,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests")
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = build_run(Path(tmp))
        proc, url = serve(run_dir)
        try:
            import httpx

            model = httpx.get(url + "/model", timeout=30).json()
            body = {"symbols": [model["universe"][0]]}
            lat = single(url, body, args.requests)
            rows = []
            for workers in levels:
                before = rss_mib(proc.pid)
                result = asyncio.run(load(url, body, workers, args.seconds))
                rows.append((workers, result, before, rss_mib(proc.pid)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        proc, url = serve(run_dir, "--compile")  # the same run, its one-window pass compiled
        try:
            compiled = single(url, body, args.requests)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = report(lat, rows, args, model, os.getloadavg()[0], compiled)
    print(text)
    if not args.dry_run:
        write_section("service", text)


def report(lat: dict, rows: list, args, model: dict, load_avg: float, compiled: dict) -> str:
    lines = [
        "## Service: latency and load (`plusultra-serve`)",
        "",
        f"`python -m experiments.benchmarks.service --seconds {args.seconds:g} --levels "
        f"{args.levels} --requests {args.requests}`; {machine()}. The default experiment's "
        f"model ({model['head']} head, window {model['window']}, "
        f"{len(model['features'])} features; hybrid backbone d_model 64, depth 4) on CPU, "
        "served by the real command (`--threads 1`, its default) on loopback; each request is "
        '`POST /predict {"symbols": [one symbol]}`: one window, features cached. The '
        f"1-minute load average at the end was {load_avg:.1f} on {os.cpu_count()} cores "
        "(everything running on the machine, this benchmark included).",
        "",
        "| single request (sequential, one client) | p50 ms | p99 ms | p50 / HTTP floor |",
        "|---|---|---|---|",
        f"| `POST /predict` end to end (client wall time) | {lat['p50']:.2f} | {lat['p99']:.2f} "
        f"| {lat['p50'] / lat['health_p50']:.1f}x |",
        f"| the decision in the server (`Server-Timing: predict`) | {lat['predict_p50']:.2f} | "
        f"{lat['predict_p99']:.2f} | {lat['predict_p50'] / lat['health_p50']:.1f}x |",
        f"| its model forward pass (`Server-Timing: model`) | {lat['model_p50']:.2f} | "
        f"{lat['model_p99']:.2f} | {lat['model_p50'] / lat['health_p50']:.1f}x |",
        f"| reference: `GET /health` end to end (the HTTP floor) | {lat['health_p50']:.2f} | "
        f"{lat['health_p99']:.2f} | 1.0x |",
        "",
        "The same run served with `--compile` (the one-window forward pass compiled by "
        "`torch.compile` at warm-up), measured the same way right after:",
        "",
        "| single request, `--compile` | p50 ms | p99 ms | p50 / HTTP floor |",
        "|---|---|---|---|",
        *(
            f"| {name} | {compiled[k + 'p50']:.2f} | {compiled[k + 'p99']:.2f} | "
            f"{compiled[k + 'p50'] / compiled['health_p50']:.1f}x |"
            for name, k in (
                ("`POST /predict` end to end", ""),
                ("the decision in the server", "predict_"),
                ("its model forward pass", "model_"),
                ("reference: `GET /health`", "health_"),
            )
        ),
        "",
        "The decision is the model's forward pass plus reading the cached window, the "
        "positions, the guardrails and the drift monitor; end to end adds the HTTP path "
        "(request and response JSON, the threadpool hop, metrics, loopback), whose floor is "
        "`GET /health` on the same server, measured interleaved with the predictions.",
        "",
        f"Throughput: an asyncio + httpx load generator, bounded workers, {args.seconds:g} s "
        "per level; memory is the server's resident set at the start and end of each level.",
        "",
        "| concurrency | requests/s | p50 ms | p99 ms | requests | errors | RSS start → end MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for workers, r, before, after in rows:
        lines.append(
            f"| {workers} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['requests']} "
            f"| {r['errors']} | {before:.0f} → {after:.0f} |"
        )

    def verdict(r: dict) -> str:
        return {
            (True, True): "meets both",
            (True, False): "meets the p50 and misses the p99",
            (False, True): "meets the p99 and misses the p50",
            (False, False): "misses both",
        }[(r["p50"] <= 5, r["p99"] <= 20)]

    lines += [
        "",
        "Against the issue's target for one window (p50 ≤ 5 ms, p99 ≤ 20 ms end to end) on "
        f"this machine: the eager model {verdict(lat)}, `--compile` {verdict(compiled)}. Of "
        f"the eager p50, the forward pass is {lat['model_p50']:.2f} ms, the rest of the "
        f"decision {lat['predict_p50'] - lat['model_p50']:.2f} ms and the HTTP path "
        f"{lat['p50'] - lat['predict_p50']:.2f} ms (client and server share the 2 cores). "
        "The forward pass runs one at a time per process (a lock), so throughput past "
        "saturation stays flat while latency grows with the queue; scale out with more "
        "processes.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
