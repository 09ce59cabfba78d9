"""Training iterations per second at the same patch and batch: segfuse versus MONAI (issue 5 §3).

One training iteration as each tool runs it: forward, loss, backward, gradient
clip, optimiser step, on a fixed random batch (the network's cost alone; data
loading is measured by the accuracy benchmarks, whose clocks include it). Every
method runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own.

Methods (all 1 input channel, 3 classes, batch ``--batch``, patch ``--patch``):

- ``segfuse_hippocampus_3d``: the network, loss (DiceCE, batch Dice, deep
  supervision) and optimiser of ``configs/hippocampus_3d.yaml`` (half-width
  ResNet18, depth 4, 3³ stem, instance norm);
- ``segfuse_default``: FusionUNet at its defaults (full ResNet18, depth 5, 7³ stem,
  batch norm, decoder 256-128-64-32-16), DiceCE, AdamW — the like-for-like of:
- ``monai_flexibleunet``: ``FlexibleUNet(backbone="resnet18", spatial_dims=3)``,
  DiceCE, AdamW (the plain MONAI loop of ``peers_hippocampus.py``);
- ``monai_dynunet``: ``DynUNet`` with nnU-Net's Task04 plan (as in
  ``peers_hippocampus.py``), deep supervision, SGD;
- ``segfuse_default_flair``: FusionUNet defaults plus a FLAIR auxiliary at 2×2×4
  (its tensor ``patch / (2, 2, 4)``), conv mapper, concat fusion — against:
- ``monai_flexibleunet_early``: FlexibleUNet with the FLAIR upsampled (trilinear,
  inside the step) and concatenated as a second channel.

Usage::

    python benchmarks/train_speed.py                 # full: 2 warm-up + 10 timed steps each
    python benchmarks/train_speed.py --quick         # 1 + 2 steps each, 32³ patch (< 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from segfuse.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
METHODS = (
    "segfuse_hippocampus_3d",
    "segfuse_default",
    "monai_flexibleunet",
    "monai_dynunet",
    "segfuse_default_flair",
    "monai_flexibleunet_early",
)
FLAIR_SCALE = (2, 2, 4)


def build(method: str, batch: int, patch: tuple[int, int, int], device: str = "cpu"):
    """``(model, () -> loss, optimizer, parameters)`` for one method, model and batch on ``device``."""
    import torch
    import torch.nn.functional as F
    from monai.losses import DiceCELoss

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers_hippocampus import DEEP_SUPERVISION_WEIGHTS, build_peer

    from segfuse.config import ModelConfig, load_config
    from segfuse.factory import build_model
    from segfuse.training.loop import make_optimizer
    from segfuse.training.losses import build_loss

    cfg = load_config(ROOT / "configs" / "hippocampus_3d.yaml", ["data.labels={0: bg, 1: a, 2: p}"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 1, *patch), generator=gen)
    y = torch.randint(0, 3, (batch, 1, *patch), generator=gen).float()  # label maps as the loaders give them
    flair = torch.randn((batch, 1, *(p // s for p, s in zip(patch, FLAIR_SCALE, strict=True))), generator=gen)
    x, y, flair = x.to(device), y.to(device), flair.to(device)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    if method in ("segfuse_hippocampus_3d", "segfuse_default", "segfuse_default_flair"):
        if method != "segfuse_hippocampus_3d":
            cfg.model = ModelConfig()
        if method == "segfuse_default_flair":
            from segfuse.config import config_from_dict

            tree = cfg.to_dict()
            tree["data"]["aux"] = {"flair": {"scale": list(FLAIR_SCALE), "mapper": "conv", "fusion": "concat"}}
            cfg = config_from_dict(tree)
        model = build_model(cfg, in_channels=1)
        loss_fn = build_loss(cfg)
        optimizer = make_optimizer(cfg, model.parameters())
        aux = {"flair": flair} if cfg.data.aux else None

        def step_loss():
            return loss_fn(model(x, aux=aux), y)

    elif method in ("monai_flexibleunet", "monai_flexibleunet_early"):
        channels = 2 if method.endswith("early") else 1
        model, optimizer, *_ = build_peer("flexibleunet", batch, in_channels=channels)

        def step_loss():
            inp = x
            if channels == 2:
                up = F.interpolate(flair, size=patch, mode="trilinear", align_corners=False)
                inp = torch.cat([x, up], dim=1)
            return dice_ce(model(inp), y)

    elif method == "monai_dynunet":
        model, optimizer, *_ = build_peer("dynunet", batch)

        def step_loss():
            out = model(x)
            return sum(w * dice_ce(out[:, i], y) for i, w in enumerate(DEEP_SUPERVISION_WEIGHTS))

    else:
        raise SystemExit(f"unknown method {method!r}; one of {METHODS}")
    params = sum(p.numel() for p in model.parameters())
    model.to(device)  # before the first step: optimizer state is created lazily, on the parameters' device
    return model, step_loss, optimizer, params


def time_steps(model, step_loss, optimizer, warmup: int, steps: int, amp: bool = False) -> list[float]:
    """Seconds of each of ``steps`` training iterations after ``warmup`` untimed ones.

    ``amp``: autocast to float16 with a gradient scaler, as segfuse trains on CUDA;
    the GPU is synchronised around every step.
    """
    import torch

    cuda = next(model.parameters()).device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda" if cuda else "cpu", enabled=amp and cuda):
            loss = step_loss()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()

    model.train()
    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        one_step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def child(method: str, batch: int, patch: tuple[int, int, int], warmup: int, steps: int, threads: int) -> dict:
    """Time ``steps`` iterations of one method in this process; returns its row."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, step_loss, optimizer, params = build(method, batch, patch)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = time_steps(model, step_loss, optimizer, warmup, steps)
    median = statistics.median(times)
    return {
        "method": method,
        "parameters": params,
        "batch": batch,
        "patch": list(patch),
        "steps_timed": steps,
        "warmup_steps": warmup,
        "times_s": [round(t, 3) for t in times],
        "median_s_per_it": round(median, 3),
        "its_per_s": round(1.0 / median, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_build_mib": round(rss_before, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 steps on a 32³ patch")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.patch, args.warmup, args.steps = [32, 32, 32], 1, 2
    patch = tuple(args.patch)
    if args.child:
        print(json.dumps(child(args.child, args.batch, patch, args.warmup, args.steps, args.threads)))
        return 0

    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cmd = [sys.executable, __file__, "--child", method, "--batch", str(args.batch), "--patch", *map(str, patch),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"method": method, "error": proc.stderr[-2000:]})
            print(f"{method}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{method}: {row['median_s_per_it']} s/it ({row['its_per_s']} it/s), "
              f"{row['parameters'] / 1e6:.2f} M parameters, peak RSS {row['peak_rss_mib']} MiB", flush=True)

    base = {r["method"]: r for r in rows if "median_s_per_it" in r}
    pairs = [("segfuse_default", "monai_flexibleunet"), ("segfuse_default_flair", "monai_flexibleunet_early"),
             ("segfuse_hippocampus_3d", "monai_flexibleunet"), ("segfuse_hippocampus_3d", "monai_dynunet")]
    ratios = {f"{a}/{b}": round(base[a]["median_s_per_it"] / base[b]["median_s_per_it"], 3)
              for a, b in pairs if a in base and b in base}
    print("\n| method | parameters (M) | s/iteration (median) | it/s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "median_s_per_it" in r:
            print(f"| {r['method']} | {r['parameters'] / 1e6:.2f} | {r['median_s_per_it']} | {r['its_per_s']} "
                  f"| {r['peak_rss_mib']} |")
        else:
            print(f"| {r['method']} | failed | | | |")
    print("\ntime ratios:", ratios)
    if args.json:
        out = {
            "benchmark": "benchmarks/train_speed.py (issue 5 §3)",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_info(),
            "rows": rows,
            "time_ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if all("median_s_per_it" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
