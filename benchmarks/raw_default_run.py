"""The default ceexp run written as a plain PyTorch script: the baseline of bench_default_run.py.

Same data (sklearn digits, the same stratified 60/20/20 split, StandardScaler on the training
part), same model (MLP 64-128-128-10), same optimizer (Adam, lr 1e-3), same batches (64,
shuffled), same 30 epochs, and the same final numbers: test accuracy, NLL, ECE, AdaECE,
classwise ECE, Brier, then temperature scaling fitted on validation and the test NLL/ECE after it.
No logging, checkpoints or figures: what ceexp adds over this is what the benchmark measures.
"""
import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

EPOCHS, BATCH, LR, N_BINS, SEED = 30, 64, 1e-3, 15, 0


def ece(conf, correct, edges):
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, len(edges) - 2)
    total = 0.0
    for b in range(len(edges) - 1):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return total


def metrics(logits, y):
    p = torch.softmax(logits, 1).double().numpy()
    yn = y.numpy()
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == yn).astype(float)
    edges = np.linspace(0, 1, N_BINS + 1)
    order = np.argsort(conf, kind="stable")
    ada = sum(len(c) / len(conf) * abs(correct[c].mean() - conf[c].mean())
              for c in np.array_split(order, N_BINS) if len(c))
    onehot = np.eye(p.shape[1])[yn]
    cw = np.mean([ece(p[:, k], onehot[:, k], edges) for k in range(p.shape[1])])
    return {
        "acc": correct.mean(),
        "nll": F.cross_entropy(logits, y).item(),
        "ece": ece(conf, correct, edges),
        "adaece": ada,
        "cwece": cw,
        "brier": ((p - onehot) ** 2).sum(1).mean(),
    }


def main():
    torch.manual_seed(SEED)
    d = load_digits()
    x, y = d.data, d.target
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=0)
    scaler = StandardScaler().fit(x[train])
    t = lambda i: (torch.tensor(scaler.transform(x[i]), dtype=torch.float32), torch.tensor(y[i]))
    (xtr, ytr), (xva, yva), (xte, yte) = t(train), t(val), t(test)

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for epoch in range(EPOCHS):
        model.train()
        for b in torch.randperm(len(ytr)).split(BATCH):
            loss = F.cross_entropy(model(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():  # per-epoch validation, as the pipeline does
            val = metrics(model(xva), yva)

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
    temperature = log_t.exp().item()
    out = {f"test/{k}": float(v) for k, v in metrics(zte.float(), yte).items()}
    out.update({f"test/{k}_ts": float(v) for k, v in metrics((zte / temperature).float(), yte).items()})
    out["test/temperature"] = temperature
    out.update({f"val/{k}": float(v) for k, v in val.items()})
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
