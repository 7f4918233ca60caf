"""One CIFAR-10 epoch of ResNet-18 as a plain PyTorch script: the baseline of bench_cifar_epoch.py.

    python benchmarks/raw_cifar_epoch.py <root>      # reads <root>/cifar10/cifar-10-python.tar.gz

Same work as ``scripts/train.py data=cifar10 model=resnet18 optimizer=sgd trainer.max_epochs=1``: read the
archive, hold out a stratified 10% for validation, normalise per channel with training statistics, one epoch
of SGD (lr 0.1, momentum 0.9, weight decay 5e-4, batch 128) with random crop + flip on each batch, a
validation pass, temperature scaling fitted on validation, and the test metrics before and after it. The
model and the batch augmentation are ceexp's (plain ``nn.Module`` and torch functions), so the ratio measures
what the framework adds: Lightning, torchmetrics, logging, checkpoint, figures.
"""
import json
import pickle
import sys
import tarfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from ceexp.augment import random_crop_flip
from ceexp.models import resnet18

BATCH, LR, N_BINS, SEED = 128, 0.1, 15, 0


def read(path):
    parts = {}
    with tarfile.open(path, "r:gz") as tar:
        for info in tar:
            if info.isfile() and ("data_batch" in info.name or "test_batch" in info.name):
                d = pickle.load(tar.extractfile(info), encoding="latin1")
                parts[info.name] = (np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(d["labels"]))
    train = [parts[k] for k in sorted(parts) if "data_batch" in k]
    test = next(v for k, v in parts.items() if "test_batch" in k)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test[0], test[1]


def metrics(logits, y):
    p = torch.softmax(logits.double(), 1).numpy()
    yn = y.numpy()
    conf, correct = p.max(1), (p.argmax(1) == yn).astype(float)
    bins = np.clip(np.ceil(conf * N_BINS).astype(int) - 1, 0, N_BINS - 1)
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(N_BINS)) / len(yn)
    return {"acc": correct.mean(), "nll": F.cross_entropy(logits.double(), y).item(), "ece": ece}


def main():
    started = time.time()
    torch.manual_seed(SEED)
    xtr, ytr, xte, yte = read(f"{sys.argv[1]}/cifar10/cifar-10-python.tar.gz")
    train, val = train_test_split(np.arange(len(ytr)), test_size=0.1, stratify=ytr, random_state=0)
    xt = xtr[train].astype(np.float64)
    mean, std = xt.mean(axis=(0, 2, 3)), xt.std(axis=(0, 2, 3))
    norm = lambda x: ((torch.from_numpy(x).float() - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
                      / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
    x_train, y_train = norm(xtr[train]), torch.from_numpy(ytr[train]).long()
    x_val, y_val = norm(xtr[val]), torch.from_numpy(ytr[val]).long()
    x_test, y_test = norm(xte), torch.from_numpy(yte).long()
    fill = torch.tensor(-mean / std, dtype=torch.float32)

    model = resnet18((3, 32, 32), 10)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    model.train()
    for b in torch.randperm(len(y_train)).split(BATCH):
        loss = F.cross_entropy(model(random_crop_flip(x_train[b], 4, fill)), y_train[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        z_val = torch.cat([model(x_val[i:i + BATCH]) for i in range(0, len(y_val), BATCH)])
        z_test = torch.cat([model(x_test[i:i + BATCH]) for i in range(0, len(y_test), BATCH)])
    out = {f"val/{k}": v for k, v in metrics(z_val, y_val).items()}
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lbfgs = torch.optim.LBFGS([log_t], line_search_fn="strong_wolfe", max_iter=100)

    def closure():
        lbfgs.zero_grad()
        nll = F.cross_entropy(z_val.double() / log_t.exp(), y_val)
        nll.backward()
        return nll

    lbfgs.step(closure)
    t = log_t.exp().item()
    out.update({f"test/{k}": v for k, v in metrics(z_test, y_test).items()})
    out.update({f"test/{k}_ts": v for k, v in metrics(z_test / t, y_test).items()})
    out["test/temperature"], out["time/seconds"] = t, time.time() - started
    json.dump({k: float(v) for k, v in out.items()}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
