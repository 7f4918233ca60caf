"""After testing: what the tested model does away from its test split, out-of-distribution (OOD) detection and
distribution shift, with the temperature fitted on the clean validation split.

    python scripts/train.py ood=[noise] shift=[gaussian_noise,contrast] shift_severities=[1,3,5]
    python scripts/train.py data=cifar10 model=resnet18 shift_c=[fog,snow] data.download=true

OOD (``ood=[...]``, names in ``ceexp.validation.OOD_SETS``). Each set's inputs are normalised as the training data
normalises its own (the model's preprocessing), through the data's pixel space (:func:`pixel_space`):

- ``noise`` (any data): :func:`ceexp.ood.noise_set`, as many samples as the test split, seed 0 (the same for every
  run of a sweep): half Gaussian, half uniform values in the data's pixel range; tabular data, which has no pixel
  range, gets the same draws spread over -3 to 3 standard units;
- ``mnist`` / ``fashion_mnist`` (for 28x28 grey models): the official test images, ``t10k-images-idx3-ubyte.gz``;
- ``svhn`` (for CIFAR models): ``test_32x32.mat`` (26,032 images);

read from ``<data.root>/<set>/`` (``data.root`` default ``data``; :func:`ceexp.validation.ood_folder`); fetched
there when ``data.download=true``. The in-distribution side is the test split's logits (``module.test_logits``).
Every metric of ``ceexp.ood.ood_metrics`` is logged as ``ood/<set>/<auroc|aupr|fpr95>_<score>`` and, with a
temperature, ``..._ts``; the logits on each set go to ``ood_logits.npz`` (``ceexp.runs.write_ood_logits``).

Shift (``shift=[...]`` at ``shift_severities``). The test split, corrupted by :func:`ceexp.shift.corrupt` in the
data's pixel space, in chunks of :data:`CHUNK` images, each chunk's draws from a CPU generator seeded by the
corruption, the severity and the chunk (:func:`shift_seed`): the corrupted images depend on nothing else, so every
run of a sweep sees the same ones. Logged per corruption and severity as ``shift/<corruption>/s<severity>/<tag>``:
``acc``, ``nll`` (nats), ``ece`` (``n_bins`` equal-width bins) and, with a temperature, ``ece_ts`` (the temperature
of the clean validation split, as deployed: it is not refitted on the shifted data).

Published shift (``shift_c=[...]`` at ``shift_severities``; data=cifar10 and data=cifar100 only). The images of
CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019; names in ``ceexp.data.formats.CIFAR_C_CORRUPTIONS``), read
one corruption and severity at a time from the distribution tar ``<data.root>/cifar10_c/CIFAR-10-C.tar`` (or
``cifar100_c/CIFAR-100-C.tar``; :func:`ceexp.validation.cifar_c_file`), fetched there when ``data.download=true``
and checked against the published MD5 unless ``data.checksum=false`` (:func:`cifar_c_archive`). Labels come from the
file; the uint8 images are normalised as the datamodule normalises its test split (its pixel space). Logged as
``shift_c/<corruption>/s<severity>/<tag>``, the same four values as ``shift`` (one formula for both), ``ece_ts`` with
the clean validation temperature.

Bad input stops before training (``ceexp.validation``: unknown names, shapes, severities, missing files); what only
the loaded data and files can tell (a data class of the user's own without a pixel space, a damaged file, a CIFAR-C
archive that is not the published one) raises ``ConfigError`` here, in one line.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ceexp.validation import (
    OOD_SETS,
    ConfigError,
    cifar_c_file,
    cifar_c_missing,
    ood_fetch_hint,
    ood_files,
    ood_folder,
)

__all__ = ["CHUNK", "cifar_c_archive", "cifar_c_metrics", "evaluate", "ood_inputs", "pixel_space", "predict",
           "shift_metrics", "shift_seed"]

log = logging.getLogger(__name__)

CHUNK = 500  # images corrupted (and predicted) at a time; each chunk draws from its own seeded generator
NOISE_SEED = 0
# tabular data: noise fractions u in [0, 1] become (u - 0.5) * 6 standard units, i.e. -3 to 3
_TABULAR_NOISE = {"mean": 0.5, "std": 1 / 6, "pixel_max": 1.0}
_REFETCH = "delete it and pass data.download=true to fetch a good copy"


def pixel_space(datamodule):
    """The :class:`ceexp.shift.PixelSpace` of a datamodule's batches: its ``mean`` and ``std`` (raw pixel units),
    white at ``pixel_max`` (255 unless the datamodule says, e.g. 16 for ``digits``) and, for batches that hold the
    images flattened, their ``image_shape``; ``None`` for data without them (tabular sets)."""
    from ceexp.shift import PixelSpace

    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None:
        return None
    as_values = lambda v: tuple(float(x) for x in torch.as_tensor(v, dtype=torch.float64).flatten())
    image_shape = getattr(datamodule, "image_shape", None)
    flat = image_shape is not None and tuple(datamodule.input_shape) != tuple(image_shape)
    return PixelSpace(as_values(mean), as_values(std), float(getattr(datamodule, "pixel_max", None) or 255.0),
                      tuple(image_shape) if flat else None)


def _images_shape(datamodule, space) -> tuple[int, ...]:
    return tuple(space.shape) if space is not None and space.shape is not None else tuple(datamodule.input_shape)


def _from_pixels(pixels: torch.Tensor, space, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Pixel values ``(N, C, H, W)`` in [0, 1] -> model inputs ``(N, *input_shape)`` float32, normalised by ``space``."""
    like = torch.empty((len(pixels), *input_shape), device="meta")
    return space.normalise(pixels.double(), like).float()


def ood_inputs(name: str, datamodule, data_cfg, space) -> torch.Tensor:
    """OOD set ``name``'s inputs as the model takes them: ``(N, *input_shape)`` float32 on the CPU, normalised like
    the training data (``space``: :func:`pixel_space`; ``None`` only for ``noise`` on tabular data).

    Raises:
        ConfigError: one line: the set's files missing (naming them, the folder and how to fetch them), damaged, of
            another image shape than the model's, or a set that needs a pixel space the data lacks.
    """
    input_shape = tuple(datamodule.input_shape)
    n = len(datamodule.y_test)
    if name == "noise":
        from ceexp.ood import noise_set

        if space is None:
            return noise_set(input_shape, n, seed=NOISE_SEED, **_TABULAR_NOISE)
        return _from_pixels(noise_set(_images_shape(datamodule, space), n, seed=NOISE_SEED), space, input_shape)
    shape = OOD_SETS[name]
    if space is None or _images_shape(datamodule, space) != shape:
        raise ConfigError(f"ood=[{name}] is invalid: expected OOD sets of the model's input shape {input_shape}: "
                          f"{name} has shape {shape}")
    images = _read_ood_images(name, data_cfg)
    return _from_pixels(torch.from_numpy(images).double() / 255.0, space, input_shape)


def _read_ood_images(name: str, data_cfg):
    """The uint8 ``(N, C, H, W)`` test images of OOD set ``name`` (fetched first with ``data.download=true``)."""
    from ceexp.data.formats import DamagedFileError, read_idx, read_svhn

    folder = ood_folder(data_cfg, name)
    missing = [f for f in ood_files(name) if not (folder / f).is_file()]
    if missing and data_cfg.get("download") is True:
        from ceexp.download import download

        download(name, folder, data_cfg.get("mirrors"))
    elif missing:
        raise ConfigError(f"ood=[{name}] is invalid: expected the {name} files {', '.join(missing)} in {folder} "
                          f"(missing); {ood_fetch_hint(data_cfg, name, folder)}")
    (filename,) = ood_files(name)
    try:
        if name == "svhn":
            return read_svhn(folder / filename)[0]
        return read_idx(folder / filename)[:, None]
    except DamagedFileError as e:
        raise ConfigError(f"{e}; delete it and fetch it again (data.download=true)") from None


@torch.no_grad()
def predict(trainer, module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits ``(N, C)`` float32 on the CPU for inputs ``x`` ``(N, ...)`` (any device), in eval mode and
    the trainer's precision, :data:`CHUNK` inputs at a time."""
    plugin = trainer.precision_plugin
    was_training = module.training
    module.eval()
    try:
        out = []
        for start in range(0, len(x), CHUNK):
            batch = plugin.convert_input(x[start:start + CHUNK].to(module.device, non_blocking=True))
            with plugin.forward_context():
                out.append(module(batch).float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def shift_seed(corruption: str, severity: int, chunk: int) -> int:
    """The seed of the generator that corrupts chunk ``chunk`` (the test images ``[chunk * CHUNK, (chunk + 1) *
    CHUNK)``) with ``corruption`` at ``severity``: a function of the three alone (CRC-32 of the text)."""
    return zlib.crc32(f"{corruption}/{severity}/{chunk}".encode())


def _test_batches(datamodule):
    """The test split in chunks of :data:`CHUNK`: ``(chunk index, inputs as the model takes them)``."""
    x = datamodule.x_test
    for i, start in enumerate(range(0, len(x), CHUNK)):
        batch = x[start:start + CHUNK]
        transform = getattr(datamodule, "batch_transform", None)
        yield i, (transform(batch) if transform is not None else batch).float()


def _shifted_values(logits: torch.Tensor, target: torch.Tensor, temperature: float | None,
                    n_bins: int) -> dict[str, float]:
    """``{acc, nll, ece[, ece_ts]}`` of logits ``(N, C)`` against int64 targets ``(N,)``: accuracy (fraction), NLL
    (nats), ECE (``n_bins`` equal-width bins) and, with a temperature, the ECE of ``logits / temperature``."""
    from ceexp.metrics import expected_calibration_error

    z = logits.double()
    out = {"acc": float((z.argmax(dim=1) == target).double().mean()),
           "nll": float(F.cross_entropy(z, target)),
           "ece": float(expected_calibration_error(z.softmax(dim=1), target, n_bins=n_bins))}
    if temperature is not None:
        out["ece_ts"] = float(expected_calibration_error((z / temperature).softmax(dim=1), target, n_bins=n_bins))
    return out


def shift_metrics(trainer, module, datamodule, corruption: str, severity: int, space, temperature: float | None,
                  n_bins: int) -> dict[str, float]:
    """``{acc, nll, ece[, ece_ts]}`` (fractions; NLL in nats) of the model on the test split corrupted by
    ``corruption`` at ``severity`` (seeded: :func:`shift_seed`)."""
    from ceexp.shift import corrupt

    logits = []
    for i, batch in _test_batches(datamodule):
        generator = torch.Generator(device="cpu").manual_seed(shift_seed(corruption, severity, i))
        logits.append(predict(trainer, module, corrupt(batch, corruption, severity, generator, space=space)))
    return _shifted_values(torch.cat(logits), datamodule.y_test.cpu(), temperature, n_bins)


def cifar_c_archive(data_cfg, shift_c: list[str]) -> Path:
    """The CIFAR-C archive of the data (:func:`ceexp.validation.cifar_c_file`), fetched first when it is missing
    and ``data.download=true``, and checked against its published MD5 unless ``data.checksum=false`` (cached, as
    the datamodules' files: :func:`ceexp.download.verify`).

    Raises:
        ConfigError: one line: the file missing (naming it, its folder and ``data.download=true``), unreadable, or
            not the published file (its MD5).
        DownloadError: see :func:`ceexp.download.download`.
    """
    from ceexp.download import RESOURCES, download, verify

    path = cifar_c_file(data_cfg)
    name = path.parent.name
    if not path.is_file() and data_cfg.get("download") is True:
        download(name, path.parent, data_cfg.get("mirrors"))
    elif not path.is_file():
        raise cifar_c_missing(shift_c, path)
    if data_cfg.get("checksum", True) is not False:
        md5 = RESOURCES[name].files[path.name]
        try:
            found = verify(path, md5)
        except OSError as e:
            raise ConfigError(f"{path} cannot be read ({e.strerror or e}); {_REFETCH}") from None
        if found is not None:
            raise ConfigError(f"{path} is not the published file: its MD5 is {found}, not {md5}; {_REFETCH}, or "
                              f"pass data.checksum=false to read it as it is")
    return path


def cifar_c_metrics(trainer, module, datamodule, path: Path, corruption: str, severity: int, space,
                    temperature: float | None, n_bins: int) -> dict[str, float]:
    """``{acc, nll, ece[, ece_ts]}`` (as :func:`shift_metrics`) of the model on the published images of CIFAR-C
    archive ``path`` (:func:`cifar_c_archive`) for ``corruption`` at ``severity``, against the archive's labels.
    The uint8 images are normalised as the datamodule normalises its own (its pixel space ``space``).

    Raises:
        ConfigError: one line naming the archive: damaged (:func:`ceexp.data.formats.read_cifar_c`) or holding
            labels outside the data's classes (CIFAR-100-C's file in the place of CIFAR-10-C's).
    """
    from ceexp.data.formats import DamagedFileError, read_cifar_c

    try:
        images, labels = read_cifar_c(path, corruption, severity)
    except DamagedFileError as e:
        raise ConfigError(f"{e}; {_REFETCH}") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= datamodule.n_classes):
        raise ConfigError(f"{path} is not the CIFAR-C archive of this data: its labels reach {labels.max()}, "
                          f"beyond the data's {datamodule.n_classes} classes; {_REFETCH}")
    x = _from_pixels(torch.from_numpy(images).double() / 255.0, space, tuple(datamodule.input_shape))
    return _shifted_values(predict(trainer, module, x), torch.from_numpy(labels), temperature, n_bins)


def evaluate(trainer, module, datamodule, cfg) -> dict[str, float]:
    """Evaluate the tested model on the OOD sets of ``cfg.ood``, the corruptions of ``cfg.shift`` and the CIFAR-C
    corruptions of ``cfg.shift_c`` at ``cfg.shift_severities``; log the values to every logger (at the step of the
    ``test/`` values) and return them.

    Writes ``ood_logits.npz`` into the run directory (rank 0, unless ``save_predictions=false``).

    Returns:
        ``{tag: float}``: ``ood/<set>/<metric>_<score>[_ts]``, ``shift/<corruption>/s<severity>/<metric>`` and
        ``shift_c/<corruption>/s<severity>/<metric>``; ``{}`` when none is asked for, or nothing was tested
        (``trainer.limit_test_batches=0``).

    Raises:
        ConfigError: see :func:`ood_inputs`, :func:`cifar_c_archive` and :func:`cifar_c_metrics`; a corruption of
            data without a pixel space.
        DownloadError: a file ``data.download=true`` could not fetch.
    """
    from ceexp.ood import ood_metrics

    ood, shift = list(cfg.get("ood") or []), list(cfg.get("shift") or [])
    shift_c = list(cfg.get("shift_c") or [])
    if not (ood or shift or shift_c) or module.test_logits is None or module.test_logits.numel() == 0:
        return {}
    space = pixel_space(datamodule)
    temperature = module.temperature
    values: dict[str, float] = {}
    ood_logits: dict[str, torch.Tensor] = {}
    for name in ood:
        ood_logits[name] = predict(trainer, module, ood_inputs(name, datamodule, cfg.data, space))
        scores = ood_metrics(module.test_logits, ood_logits[name], temperature)
        values.update({f"ood/{name}/{key}": value for key, value in scores.items()})
    for field, names in (("shift", shift), ("shift_c", shift_c)):
        if names and space is None:
            raise ConfigError(f"{field}={names} is invalid: expected image data with a pixel space (mean, std), "
                              f"but {type(datamodule).__name__} has none")
    archive = cifar_c_archive(cfg.data, shift_c) if shift_c else None
    for corruption in shift:
        for severity in cfg.shift_severities:
            result = shift_metrics(trainer, module, datamodule, corruption, int(severity), space, temperature,
                                   cfg.n_bins)
            values.update({f"shift/{corruption}/s{severity}/{key}": value for key, value in result.items()})
    for corruption in shift_c:
        for severity in cfg.shift_severities:
            result = cifar_c_metrics(trainer, module, datamodule, archive, corruption, int(severity), space,
                                     temperature, cfg.n_bins)
            values.update({f"shift_c/{corruption}/s{severity}/{key}": value for key, value in result.items()})
    module._log_epoch(values)  # the module's one path to the loggers, at the test values' step
    if ood_logits and cfg.get("save_predictions", True) and trainer.is_global_zero:
        from ceexp.runs import write_ood_logits

        write_ood_logits(Path(cfg.paths.output_dir), ood_logits)
    _log_summary(values, ood, {"shift": shift, "shift_c": shift_c})
    return values


def _log_summary(values: dict[str, Any], ood: list[str], shifts: dict[str, list[str]]) -> None:
    """One line per OOD set; per kind of shift (``shift``, ``shift_c``) asked for, the mean accuracy and ECE over
    its corruptions and severities."""
    for name in ood:
        log.info("ood/%s: AUROC %.4f (MSP), %.4f (energy); FPR95 %.4f (MSP)", name, values[f"ood/{name}/auroc_msp"],
                 values[f"ood/{name}/auroc_energy"], values[f"ood/{name}/fpr95_msp"])
    for prefix, names in shifts.items():
        if not names:
            continue
        for metric in ("acc", "ece"):
            tags = [k for k in values if k.startswith(f"{prefix}/") and k.endswith(f"/{metric}")]
            log.info("%s: mean %s %.4f over %d corruptions x severities", prefix, metric,
                     sum(values[k] for k in tags) / len(tags), len(tags))
