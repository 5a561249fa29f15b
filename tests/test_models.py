"""Models: output shapes, logits (no softmax), the registry and build_model."""

from __future__ import annotations

import pytest
import torch

from pertattack.models import MODELS, ConvAutoencoder, FCAutoencoder, build_model

CASES = [
    ("fcnn", {}, (3, 1, 28, 28), (3, 10)),
    ("fcnn", {"in_shape": (3, 8, 8), "hidden": (7,), "classes": 4}, (2, 3, 8, 8), (2, 4)),
    ("lenet5", {}, (3, 1, 28, 28), (3, 10)),
    ("lenet5", {"in_channels": 3, "classes": 5}, (2, 3, 28, 28), (2, 5)),
    ("smallcnn", {}, (3, 1, 8, 8), (3, 10)),
    ("nin", {}, (2, 3, 32, 32), (2, 10)),
    ("densenet40", {"classes": 4}, (2, 3, 32, 32), (2, 4)),
    ("resnet18", {"width": 8, "classes": 5}, (2, 3, 32, 32), (2, 5)),
    ("fc-ae", {}, (3, 1, 28, 28), (3, 1, 28, 28)),
    ("fc-ae", {"in_shape": (3, 4, 4), "code": 8}, (2, 3, 4, 4), (2, 3, 4, 4)),
    ("conv-ae", {}, (2, 3, 96, 96), (2, 3, 96, 96)),
    ("conv-ae", {"channels": 1, "width": 8}, (2, 1, 28, 12), (2, 1, 28, 12)),
    ("colorization", {"width": 4}, (2, 1, 32, 24), (2, 3, 32, 24)),
]


@pytest.mark.parametrize(("name", "kwargs", "in_shape", "out_shape"), CASES, ids=lambda v: str(v))
def test_output_shapes(name: str, kwargs: dict, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    model = build_model(name, seed=0, **kwargs)
    out = model(torch.rand(in_shape))
    assert out.shape == out_shape and out.dtype == torch.float32
    if name.endswith("-ae"):
        assert out.min() >= 0 and out.max() <= 1  # sigmoid output, an image in the box
    else:
        assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # logits, not probabilities


def test_registry_covers_every_model() -> None:
    """Every registered model has a shape case above."""
    assert set(MODELS) == {"fcnn", "lenet5", "smallcnn", "nin", "densenet40", "resnet18", "fc-ae", "conv-ae",
                           "colorization"}
    assert {n for n, *_ in CASES} == set(MODELS)


def test_fcnn_is_the_papers_architecture() -> None:
    model = build_model("fcnn")
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(784, 150), (150, 100), (100, 10)]


def test_fc_autoencoder_compression() -> None:
    ae = FCAutoencoder()
    x = torch.rand(2, 1, 28, 28)
    z = ae.encode(x)
    assert z.shape == (2, 32) and 1 - 32 / 784 > 0.95
    torch.testing.assert_close(ae.decode(z), ae(x))


def test_conv_autoencoder_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvAutoencoder()(torch.rand(1, 3, 30, 32))


def test_build_model_aliases_and_seed() -> None:
    a = build_model("LeNet5", seed=3)
    b = build_model("lenet5", seed=3)
    c = build_model("lenet5", seed=4)
    assert isinstance(build_model("fc_ae"), FCAutoencoder)
    for (ka, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), ka
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_build_model_seed_leaves_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    build_model("fcnn", seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_build_model_unknown_name() -> None:
    with pytest.raises(ValueError,
                       match=r"unknown model 'lenet'.*Did you mean 'lenet5'.*Available: colorization, conv-ae, "):
        build_model("lenet")
    available = "Available: colorization, conv-ae, densenet40, fc-ae, fcnn, lenet5, nin, resnet18, smallcnn"
    with pytest.raises(ValueError, match=available):
        build_model("resnet50")
