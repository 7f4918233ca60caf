"""The GPU checks of ceexp, one prepared script for a lent GPU machine (under 5 minutes on one GPU).

    bash benchmarks/gpu_check.sh [OUT_DIR]        # writes OUT_DIR/gpu_check.json (default $OUT or .)
    python benchmarks/gpu_check.py --out x.json [--images 20000] [--device cuda]

1. ``trainer=gpu`` (bf16-mixed) on CIFAR-10-shaped random data (written in the real archive format, held on the
   device by the datamodule), ResNet-18, one epoch per loss (ce, smoothed, focal, focal_sd53, mse): training
   images per second of ceexp's own work (``time/seconds`` of metrics.json) and of the whole command, against a
   plain PyTorch GPU loop (same model, data on the device, batches of 128, SGD, bf16 autocast, one epoch, a
   validation and a test pass). Target: ceexp <= 1.2x the plain loop's time.
2. bf16 autocast: each loss and ceexp's evaluation metrics are fed bf16 logits from an autocast forward; the
   losses must come back float32 and every metric a finite float computed in float32 or wider.
3. ``trainer=ddp`` with the GPUs present (one epoch of the same run), which must complete.
Every result goes into one JSON file; the script exits 0 even when a target is missed (the JSON says so).
``--device cpu --images 256`` runs the same checks on the CPU (a dry run of the script itself).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cifar_epoch import write_cifar10  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ("ce", "smoothed", "focal", "focal_sd53", "mse")
TARGET = 1.2
IMAGES = [0]  # the training images written (set in main)


def plain_loop(root: Path, device: str) -> dict:
    """One epoch of the plain GPU loop on the archive in ``root``; seconds and images/s of the training epoch."""
    sys.path.insert(0, str(ROOT))
    from raw_cifar_epoch import read  # same reading as the CPU baseline

    from ceexp.augment import random_crop_flip
    from ceexp.models import resnet18

    x, y, xt, yt = read(root / "cifar10" / "cifar-10-python.tar.gz")
    start = time.perf_counter()
    x = torch.tensor(x, device=device).float().div_(255)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    x, xt = (x - mean) / std, (torch.tensor(xt, device=device).float().div_(255) - mean) / std
    y, yt = torch.tensor(y, device=device), torch.tensor(yt, device=device)
    n_val = len(y) // 10
    xv, yv, x, y = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    model = resnet18((3, 32, 32), 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    # bf16 autocast on the GPU, as trainer=gpu; the CPU dry run stays float32 (CPU bf16 convolutions are slow)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu")
    model.train()
    t0 = time.perf_counter()
    for b in torch.randperm(len(y), device=device).split(128):
        with autocast:
            loss = F.cross_entropy(model(random_crop_flip(x[b].contiguous(memory_format=torch.channels_last))), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad(), autocast:
        zv = torch.cat([model(xv[i:i + 512]) for i in range(0, len(yv), 512)]).float()
        zt = torch.cat([model(xt[i:i + 512]) for i in range(0, len(yt), 512)]).float()
    return {"seconds": time.perf_counter() - start, "train_seconds": train_s, "images": len(y),
            "train_images_per_s": len(y) / train_s, "val_nll": F.cross_entropy(zv, yv).item(),
            "test_acc": (zt.argmax(1) == yt).float().mean().item()}


def ceexp_run(root: Path, cwd: Path, device: str, loss: str, extra: list[str], label: str = "") -> dict:
    """One ceexp epoch as a fresh process; its wall time, own work (``time/seconds``) and test metrics."""
    label = label or loss
    trainer = ["trainer=gpu"] if device.startswith("cuda") else []
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *trainer, "data=cifar10", f"data.root={root}",
           "data.checksum=false", "model=resnet18", "optimizer=sgd", f"loss={loss}", "trainer.max_epochs=1",
           "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", f"paths.root_dir={cwd / label}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = sorted((cwd / label).glob("runs/*/*/metrics.json"))
    metrics = json.loads(found[-1].read_text()) if found else {}
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_seconds": wall,
            "own_seconds": metrics.get("time/seconds"), "test_acc": metrics.get("test/acc"),
            "train_images_per_s": (0.9 * IMAGES[0] / metrics["time/seconds"]) if metrics.get("time/seconds") else None,
            "test_ece": metrics.get("test/ece"), "stderr_tail": proc.stderr[-1500:] if proc.returncode else ""}


def bf16_check(device: str) -> dict:
    """Losses and metrics on bf16 logits from an autocast forward: float32 results, finite."""
    import hydra
    from omegaconf import OmegaConf

    from ceexp.models import resnet18
    from ceexp.module import EvalMetrics

    model = resnet18((3, 32, 32), 10).to(device)
    x, y = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    out: dict = {}
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
        logits = model(x)
        out["logits_dtype"] = str(logits.dtype)
        for name in LOSSES:
            cfg = OmegaConf.load(ROOT / "configs" / "loss" / f"{name}.yaml")
            value = hydra.utils.instantiate(cfg)(logits, y)
            out[f"loss_{name}_dtype"] = str(value.dtype)
            out[f"loss_{name}_finite"] = bool(torch.isfinite(value).item())
    metrics = EvalMetrics(10, 15).to(device)
    metrics.update(logits, y)
    values = metrics.compute()
    out["metrics_finite"] = all(v == v and abs(v) != float("inf") for v in values.values())
    out["metric_state_dtypes"] = sorted({str(t.dtype) for m in metrics.children() for t in m.metric_state.values()
                                         if isinstance(t, torch.Tensor)})
    out["passed"] = (all(out[f"loss_{n}_dtype"] == "torch.float32" for n in LOSSES) and out["metrics_finite"]
                     and all(d in ("torch.float32", "torch.float64", "torch.int64") for d in out["metric_state_dtypes"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--images", type=int, default=20000, help="training images written (10%% validation)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    IMAGES[0] = args.images
    result: dict = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        result["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        write_cifar10(cwd / "data" / "cifar10", args.images, max(args.images // 5, 10))
        result["bf16"] = bf16_check(args.device)
        result["plain"] = plain_loop(cwd / "data", args.device)
        result["ceexp"] = {loss: ceexp_run(cwd / "data", cwd, args.device, loss, []) for loss in LOSSES}
        ce = result["ceexp"]["ce"]
        if ce["own_seconds"]:
            result["ratio_own_work_ce"] = ce["own_seconds"] / result["plain"]["seconds"]
            result["target"] = TARGET
            result["passed"] = result["ratio_own_work_ce"] <= TARGET
        if args.device.startswith("cuda"):
            result["ddp"] = ceexp_run(cwd / "data", cwd, args.device, "ce", ["trainer=ddp"], label="ddp")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "ceexp"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
