import pytest
import torch

from robustfer.errors import RobustferError
from robustfer.models import create_backbone, create_model, load_init


def test_compact_shapes_and_size():
    m = create_model("compact", 8)
    assert m(torch.zeros(2, 1, 48, 48)).shape == (2, 8)
    assert m.backbone.forward_map(torch.zeros(2, 1, 48, 48)).shape == (2, 512, 3, 3)
    assert 1.5e6 < sum(p.numel() for p in m.parameters()) < 3e6


def test_resnet18_matches_torchvision_names():
    import torchvision

    bb = create_backbone("resnet18")
    ref = torchvision.models.resnet18(weights=None).state_dict()
    assert set(bb.state_dict()) == {k for k in ref if not k.startswith("fc.")}
    assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_load_face_pretrained_layout(tmp_path):
    """The FER papers' ResNet-18 files: {'state_dict': {'module.conv1.weight': ..., 'module.fc.weight': (1000x512)}}."""
    import torchvision

    src = torchvision.models.resnet18(weights=None, num_classes=1000)
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ms_celeb.pth")
    bb = create_backbone("resnet18")
    skipped = load_init(bb, tmp_path / "ms_celeb.pth")
    assert skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(bb.conv1.weight, src.conv1.weight)
    assert torch.equal(bb.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)


def test_load_plain_state_dict_roundtrip(tmp_path):
    a, b = create_backbone("compact"), create_backbone("compact")
    torch.save(a.state_dict(), tmp_path / "w.pt")
    assert load_init(b, tmp_path / "w.pt") == []
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_load_rejects_other_architectures_and_files(tmp_path):
    torch.save(create_backbone("compact").state_dict(), tmp_path / "compact.pt")
    with pytest.raises(RobustferError, match="compact.pt does not fit this model"):
        load_init(create_backbone("resnet18"), tmp_path / "compact.pt")
    sd = create_backbone("resnet18").state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(RobustferError, match=r"shape mismatch at conv1.weight"):
        load_init(create_backbone("resnet18"), tmp_path / "bad.pt")
    with pytest.raises(RobustferError, match="does not exist"):
        load_init(create_backbone("resnet18"), tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(RobustferError, match="not a readable PyTorch state_dict"):
        load_init(create_backbone("resnet18"), tmp_path / "junk.pt")


def test_unknown_model():
    with pytest.raises(RobustferError, match="unknown model"):
        create_model("vgg99", 8)


@pytest.mark.parametrize("name, size, width, params", [
    ("compact_s", 48, 512, 2311144), ("compact_s40", 40, 512, 2311144), ("compact_s_w75", 48, 384, 1301360)])
def test_strided_stem_models_shapes_and_size(name, size, width, params):
    """The compact_s* models: a stride-2 first conv (no full-resolution map), the compact CNN from there on."""
    from robustfer.models import model_defaults

    m = create_model(name, 8)
    assert model_defaults(name) == (size, 1)
    assert m.backbone.features[0].stride == (2, 2)
    assert m.backbone.features[0](torch.zeros(1, 1, size, size)).shape[-1] == size // 2
    assert m(torch.zeros(2, 1, size, size)).shape == (2, 8)
    assert m.backbone.forward_map(torch.zeros(2, 1, 48, 48)).shape == (2, width, 3, 3)
    assert sum(p.numel() for p in m.parameters()) == params


def test_compact_s_has_the_compact_weights_from_its_second_conv():
    """Same convolutions as `compact` except the stem's stride: its state_dict shapes are compact's."""
    a = create_backbone("compact").state_dict()
    b = create_backbone("compact_s").state_dict()
    assert [v.shape for v in a.values()] == [v.shape for v in b.values()]


@pytest.mark.parametrize("name", ["compact_s", "compact_s40", "compact_s_w75"])
def test_new_models_overfit_one_batch(name):
    """A sanity check that gradients reach every layer: 16 random images with fixed labels are memorised."""
    from robustfer.models import model_defaults

    torch.manual_seed(0)
    size, chans = model_defaults(name)
    m = create_model(name, 8)
    x, y = torch.randn(16, chans, size, size), torch.arange(16) % 8
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert (m(x).argmax(1) == y).all() and loss.item() < 0.1
