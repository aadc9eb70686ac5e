"""Batched RandAugment/Cutout of NCCTFER and DNFER (methods.md views table): PIL fidelity, per-sample
randomness, determinism, magnitudes, fills and the scaled Cutout/padding sizes."""
import numpy as np
import PIL.Image as Image
import PIL.ImageEnhance as Enhance
import PIL.ImageOps as Ops
import pytest
import torch

from robustfer import randaugment as R


def _img(seed=0, n=1, c=1, size=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(20, 221, (n, c, size, size), generator=g).float() / 255
    x[:, :, :8] = 5 / 255  # a dark band, so histograms are uneven
    return x


def _pil(x):
    return Image.fromarray((x[0, 0] * 255).round().byte().numpy(), "L")


def _t(im):
    return torch.from_numpy(np.asarray(im).astype(np.float32))[None, None] / 255


def _levels_diff(a, b):
    return ((R.quantize(a) - b).abs() * 255).max().item()


def test_ops_match_pil():
    x = _img()
    im, one = _pil(x), torch.ones(1)
    exact = {
        "equalize": (R.equalize(x), Ops.equalize(im)),
        "posterize": (R.posterize(x, one * 5), Ops.posterize(im, 5)),
        "solarize": (R.solarize(x, one * 100), Ops.solarize(im, 100)),
        "rotate": (R.rotate(x, one * -27, 0.0, "nearest"), im.rotate(-27)),
        "shear_x": (R.shear_x(x, one * 0.27, 0.0, "nearest"), im.transform(im.size, Image.AFFINE, (1, 0.27, 0, 0, 1, 0))),
        "shear_y": (R.shear_y(x, one * -0.18, 0.0, "nearest"), im.transform(im.size, Image.AFFINE, (1, 0, 0, -0.18, 1, 0))),
        "translate_x": (R.translate_x(x, one * 7, 0.0, "nearest"), im.transform(im.size, Image.AFFINE, (1, 0, 7, 0, 1, 0))),
        "translate_y": (R.translate_y(x, one * -4, 0.0, "nearest"), im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, -4))),
    }
    for name, (ours, ref) in exact.items():
        assert _levels_diff(ours, _t(ref)) == 0, name
    # PIL's enhance blends and autocontrast lut round differently: within one grey level
    near = {"autocontrast": (R.autocontrast(x), Ops.autocontrast(im)),
            "brightness": (R.brightness(x, one * 0.41), Enhance.Brightness(im).enhance(0.41)),
            "contrast": (R.contrast(x, one * 1.9), Enhance.Contrast(im).enhance(1.9)),
            "sharpness": (R.sharpness(x, one * 0.14), Enhance.Sharpness(im).enhance(0.14))}
    for name, (ours, ref) in near.items():
        assert _levels_diff(ours, _t(ref)) <= 1.0001, name


def test_batched_histogram_ops_are_per_sample_and_per_channel():
    x = _img(1, n=3, c=3, size=16)
    x[1] = x[1] * 0.5  # a different histogram per sample
    for op in (R.equalize, R.autocontrast):
        batched = op(x)
        for i in range(3):
            for c in range(3):
                assert torch.equal(batched[i:i + 1, c:c + 1], op(x[i:i + 1, c:c + 1])), (op.__name__, i, c)


def test_color_is_identity_on_grey():
    x = _img(2, n=2)
    assert torch.equal(R.color(x, torch.tensor([0.14, 1.9])), x)
    x3 = x.expand(-1, 3, -1, -1)
    assert torch.allclose(R.color(x3, torch.tensor([0.14, 1.9])), x3, atol=1e-6)


def test_ncctfer_magnitudes_follow_fixmatch():
    t = R.NCCTFER.tables
    for v in range(1, 10):
        assert t["enhance"][v] == pytest.approx(0.05 + 0.09 * v)
        assert t["posterize"][v] == 4 + int(0.4 * v + 1e-9)
        assert t["rotate"][v] == 3 * v
        assert t["shear"][v] == pytest.approx(0.03 * v)
    assert [t["solarize"][v] for v in (1, 5, 9)] == [231, 128, 26]    # 256 - int(25.6 v)
    assert [t["translate"][v] for v in (1, 5, 9)] == [6, 33, 60]       # int(0.03 v * 224) at 224 px
    p = R.draw(5000, torch.Generator().manual_seed(0), R.NCCTFER, "cpu")
    assert p["v"].min() == 1 and p["v"].max() == 9                    # np.random.randint(1, 10)
    assert 0.45 < p["apply"].float().mean() < 0.55
    assert set(p["op"].unique().tolist()) == set(range(len(R.OPS)))


def test_dnfer_fixed_level_10():
    p = R.draw(100, torch.Generator().manual_seed(0), R.DNFER, "cpu")
    assert bool((p["v"] == 10).all())
    t = {k: v[10] for k, v in R.DNFER.tables.items()}
    assert t["enhance"] == pytest.approx(1.9) and t["posterize"] == 4 and t["rotate"] == 30
    assert t["shear"] == pytest.approx(0.3) and t["translate"] == 10 and t["solarize"] == 256
    x = _img(3, n=2)
    assert torch.equal(R.solarize(x, torch.full((2,), 256.0)), R.quantize(x))  # threshold 256 = no-op


def test_ops_are_per_sample_random_and_deterministic():
    x = _img(4).expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    for pol in (R.NCCTFER, R.DNFER):
        a = R.strong_view(x, torch.Generator().manual_seed(7), pol)
        b = R.strong_view(x, torch.Generator().manual_seed(7), pol)
        c = R.strong_view(x, torch.Generator().manual_seed(8), pol)
        assert torch.equal(a, b), pol.name
        assert not torch.equal(a, c), pol.name
        distinct = {tuple(a[i].flatten()[::37].tolist()) for i in range(32)}
        assert len(distinct) > 16, pol.name   # copies of one image come out different
    p = R.draw(32, torch.Generator().manual_seed(0), R.NCCTFER, "cpu")
    assert len(set(p["op"][0].tolist())) > 5 and len(set(p["v"][0].tolist())) > 3


@pytest.mark.parametrize("policy,identities", [(R.NCCTFER, {"Identity", "Color"}),
                                               (R.DNFER, {"Identity", "Color", "Solarize"})], ids=["ncctfer", "dnfer"])
def test_rand_augment_applies_exactly_the_drawn_ops(policy, identities):
    # 400 copies of one grey image (levels 10..240, so AutoContrast and Solarize at 231 change it): a copy
    # changes iff one of its 2 slots drew an applied op that is not an identity here (Color on grey; DNFER's
    # Solarize at level 10 = threshold 256); crop, flip and Cutout are not involved
    g = torch.Generator().manual_seed(9)
    x = (torch.randint(10, 241, (1, 1, 48, 48), generator=g) / 255).expand(400, -1, -1, -1).contiguous()
    p = R.draw(400, torch.Generator().manual_seed(3), policy, "cpu")
    y = R.rand_augment(x, None, policy, params=p)
    acts = torch.zeros(400, dtype=torch.bool)
    for slot in range(policy.n_ops):
        acts |= p["apply"][slot] & torch.tensor([R.OPS[k] not in identities for k in p["op"][slot].tolist()])
    changed = (y != R.quantize(x)).flatten(1).any(1)
    assert 0.5 < acts.float().mean() < 0.8
    assert torch.equal(changed, acts), f"{int((changed != acts).sum())} copies changed against their draws"
    # copies with one applied op are that op alone (batched convolutions may round one level apart)
    for i in (p["apply"].sum(0) == 1).nonzero().squeeze(1)[:40].tolist():
        s = int(p["apply"][:, i].int().argmax())
        alone = R.quantize(R.apply_op(R.quantize(x[i:i + 1]), R.OPS[p["op"][s, i]], p["v"][s, i:i + 1],
                                      p["sign"][s, i:i + 1], policy))
        assert _levels_diff(y[i:i + 1], alone) <= 1.0001, (i, R.OPS[p["op"][s, i]])


def test_geometric_fill_black_for_ncctfer_grey_for_dnfer():
    x = torch.ones(1, 1, 48, 48)
    px = torch.tensor([20.0])
    nc = R.translate_x(x, px, R.NCCTFER.fill, R.NCCTFER.mode)
    dn = R.translate_x(x, px, R.DNFER.fill, R.DNFER.mode)
    assert nc[0, 0, :, -10:].max() == 0 and nc[0, 0, :, :20].min() == 1
    assert torch.allclose(dn[0, 0, :, -10:], torch.tensor(128 / 255)) and dn[0, 0, :, :20].min() > 1 - 1e-6


def _boxes(out, fill):
    """(height, width, top, left) of the filled box of each sample."""
    m = (out[:, 0] - fill).abs() < 1e-6
    rows, cols = m.any(2), m.any(1)
    h, w = rows.sum(1), cols.sum(1)
    return h, w, rows.float().argmax(1), cols.float().argmax(1)


def test_cutout_sizes_and_fills():
    assert R.scaled(16, 224) == 16 and R.scaled(16, 48) == 3 and R.scaled(4, 48) == 1 and R.scaled(4, 224) == 4
    g = torch.Generator().manual_seed(0)
    x = torch.ones(400, 1, 224, 224)
    nc = R.cutout(x, g, R.NCCTFER)
    h, w, top, left = _boxes(nc, 127 / 255)
    assert bool((h <= 16).all() and (w <= 16).all() and (h >= 8).all())
    assert bool((w[left == 0] == 16).all())                 # never clipped on the left: x0 = max(0, c - 8)
    assert bool((w[left + 16 > 224] < 16).all()) and bool((w[left + 16 > 224] == 224 - left[left + 16 > 224]).all())
    assert ((nc - 1).abs() > 1e-6).sum((1, 2, 3)).eq(h * w).all()
    dn = R.cutout(x, g, R.DNFER)
    h, w, top, left = _boxes(dn, 128 / 255)
    assert bool((w <= 16).all()) and bool((w[left == 0] < 16).any())   # clipped on the left too
    small = R.cutout(torch.ones(200, 1, 48, 48), g, R.NCCTFER)
    assert int(((small - 1).abs() > 1e-6).sum((1, 2, 3)).max()) == 9  # 3 x 3 at 48 px


@pytest.mark.parametrize("policy,mode", [(R.NCCTFER, "constant"), (R.DNFER, "reflect")], ids=["ncctfer", "dnfer"])
def test_base_views_padding(policy, mode):
    # a textured image (every row and column different), so zero, reflect and replicate padding all differ:
    # each view must be one of the 3 x 3 crops (1-px padding at 48 px) of the image padded the policy's way,
    # mirrored or not, and every offset must occur
    g = torch.Generator().manual_seed(6)
    x = (torch.randint(0, 256, (1, 1, 48, 48), generator=g) / 255).expand(200, -1, -1, -1).contiguous()
    out = R.base_view(x, torch.Generator().manual_seed(0), policy)
    padded = torch.nn.functional.pad(x[:1], (1, 1, 1, 1), mode=mode)
    crops = {(dy, dx, flip): (lambda c: c.flip(-1) if flip else c)(padded[0, :, dy:dy + 48, dx:dx + 48])
             for dy in range(3) for dx in range(3) for flip in (False, True)}
    found = [next((k for k, c in crops.items() if torch.equal(v, c)), None) for v in out]
    assert None not in found, f"{found.count(None)} of 200 views are no crop of the image padded by {mode!r}"
    assert {k[:2] for k in found} == {(dy, dx) for dy in range(3) for dx in range(3)}
    assert {k[2] for k in found} == {False, True}


def test_rand_augment_keeps_range_and_shape():
    x = _img(5, n=64, c=3)
    for pol in (R.NCCTFER, R.DNFER):
        y = R.strong_view(x, torch.Generator().manual_seed(1), pol)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, R.quantize(y))
