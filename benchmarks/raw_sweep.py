"""A 12-job digits sweep written as one plain PyTorch process: the baseline of bench_sweep.py.

The jobs of ``python scripts/train.py -m loss=ce,focal seed=0,1,2,3,4,5``, one after another in this one
process: the same data (sklearn digits, stratified 60/20/20 split, one mean and spread over the training pixels), model
(MLP 64-128-128-10), optimizer (Adam, lr 1e-3), batches (64, shuffled), 30 epochs, a validation pass every epoch
(NLL, accuracy, ECE), temperature scaling fitted on validation (LBFGS over log T), the test metrics before and
after it, and one metrics.json per job in its own folder. No logging, checkpoints or figures.

    python benchmarks/raw_sweep.py OUT_DIR [--epochs 30] [--seeds 6] [--fused]

``--fused``: torch's fused Adam kernel, as ceexp's optimizer configs use it (the like-for-like baseline).
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

BATCH, LR, N_BINS = 64, 1e-3, 15


def ece(logits, y):
    p = logits.softmax(1)
    conf, pred = p.max(1)
    correct = (pred == y).float()
    idx = torch.clamp(torch.bucketize(conf, torch.linspace(0, 1, N_BINS + 1)[1:-1]), 0, N_BINS - 1)
    n = torch.bincount(idx, minlength=N_BINS).clamp(min=1)
    gap = torch.bincount(idx, conf - correct, minlength=N_BINS).abs()
    return (gap.sum() / len(y)).item(), correct.mean().item()


def focal(logits, y, gamma=2.0):
    logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def job(loss_name, seed, epochs, data, out, fused=False):
    (xtr, ytr), (xva, yva), (xte, yte) = data
    torch.manual_seed(seed)
    loss_fn = F.cross_entropy if loss_name == "ce" else focal
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR, **({"fused": True} if fused else {}))
    for epoch in range(epochs):
        model.train()
        for b in torch.randperm(len(ytr)).split(BATCH):
            loss = loss_fn(model(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            zva = model(xva)
            val = {"val/nll": F.cross_entropy(zva, yva).item()}
            val["val/ece"], val["val/acc"] = ece(zva, yva)
    with torch.no_grad():
        zva, zte = model(xva).double(), model(xte).double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lbfgs = torch.optim.LBFGS([log_t], line_search_fn="strong_wolfe", max_iter=100)

    def closure():
        lbfgs.zero_grad()
        nll = F.cross_entropy(zva / log_t.exp(), yva)
        nll.backward()
        return nll

    lbfgs.step(closure)
    t = log_t.exp().item()
    metrics = dict(val)
    metrics["test/nll"] = F.cross_entropy(zte, yte).item()
    metrics["test/ece"], metrics["test/acc"] = ece(zte, yte)
    metrics["test/nll_ts"] = F.cross_entropy(zte / t, yte).item()
    metrics["test/ece_ts"], _ = ece(zte / t, yte)
    metrics["test/temperature"] = t
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--fused", action="store_true")
    args = parser.parse_args()
    d = load_digits()
    x, y = d.data, d.target
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=0)
    mean, std = x[train].mean(), x[train].std()
    t = lambda i: (torch.tensor((x[i] - mean) / std, dtype=torch.float32), torch.tensor(y[i]))
    data = (t(train), t(val), t(test))
    n = 0
    for loss_name in ("ce", "focal"):
        for seed in range(args.seeds):
            job(loss_name, seed, args.epochs, data, os.path.join(args.out, f"{n}_loss={loss_name},seed={seed}"),
                args.fused)
            n += 1


if __name__ == "__main__":
    main()
