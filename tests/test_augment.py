import torch

from robustfer import augment as A


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_per_sample_and_keeps_size():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(300, 1, 1, 1)
    y = A.random_crop(x, _g(), padding=2, fill=-1.0)
    assert y.shape == x.shape
    # every crop is one 16 x 16 window of the image padded with the fill, and all 5 x 5 offsets occur
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2), value=-1.0)
    windows = {(dy, dx): padded[:, dy:dy + 16, dx:dx + 16] for dy in range(5) for dx in range(5)}
    found = [next((k for k, w in windows.items() if torch.equal(v, w)), None) for v in y]
    assert None not in found, f"{found.count(None)} crops are no window of the padded image"
    assert set(found) == set(windows), f"offsets never drawn: {sorted(set(windows) - set(found))}"


def test_crop_is_deterministic_for_a_seed():
    x = torch.rand(8, 1, 12, 12)
    assert torch.equal(A.random_crop(x, _g(3), 2), A.random_crop(x, _g(3), 2))


def test_hflip_mirrors_about_half():
    x = torch.rand(1000, 1, 4, 4)
    y = A.hflip(x, _g())
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert torch.all(flipped | same) and 400 < int(flipped.sum()) < 600


def test_random_erasing_area_and_value():
    x = torch.ones(500, 1, 40, 40)
    y = A.random_erasing(x, _g(), p=1.0, scale=(0.02, 0.25), value=0.0)
    erased = (y == 0).flatten(1).float().mean(1)
    assert torch.all(erased > 0) and erased.max() <= 0.25 + 0.02


def test_flip_or_noise_never_both():
    x = torch.rand(2000, 1, 8, 8) * 0.5 + 0.25
    y = A.flip_or_noise(x, _g())
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    noisy = ~(same | flipped)
    # p 0.5 nothing; of the rest, half flip, half noise
    assert 900 < int(same.sum()) < 1100 and 400 < int(flipped.sum()) < 600 and 400 < int(noisy.sum()) < 600
    d = (y - x)[noisy] * 255                       # no clipping in 0.25..0.75: std sqrt(30) grey levels
    assert abs(float(d.std()) - 30 ** 0.5) < 0.1 and abs(float(d.mean())) < 0.05


def test_to_float_channels_and_normalize():
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    f = A.to_float(x, 3)
    assert f.shape == (2, 3, 4, 4) and torch.all(f == 1)
    n = A.normalize(f, "imagenet")
    assert torch.allclose(n[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
