"""Calling the user's model: preprocessing, output selection, eval mode, output checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import CONV_SHAPE, DTYPE, MLP, ConvNet, DictModel, Normalize, TupleModel, modes, rand_x
from torch import nn

from pertattack.modelcall import ModelCall, check_scores, eval_mode


def test_preprocess_per_channel_equals_normalising_by_hand():
    net = ConvNet().eval()
    x = rand_x(3, CONV_SHAPE, seed=0)
    mean, std = (0.4, 0.6), (0.2, 0.3)
    ref = nn.Sequential(Normalize(mean, std), net)(x)
    got = ModelCall(net, (mean, std))(x)
    assert torch.allclose(got, ref, atol=1e-12)
    got_t = ModelCall(net, (torch.tensor(mean), torch.tensor(std)))(x)
    assert torch.allclose(got_t, ref, atol=1e-12)
    # scalars
    assert torch.allclose(ModelCall(net, (0.5, 0.25))(x), net((x - 0.5) / 0.25), atol=1e-12)


def test_no_preprocess_is_the_model():
    net = MLP().eval()
    x = torch.rand(4, 12, dtype=DTYPE)
    assert torch.equal(ModelCall(net)(x), net(x))


def test_output_selection():
    net = MLP().eval()
    x = torch.rand(4, 12, dtype=DTYPE)
    want = net(x)
    assert torch.equal(ModelCall(DictModel(net), output="logits")(x), want)
    assert torch.equal(ModelCall(TupleModel(net), output=0)(x), want)
    assert torch.equal(ModelCall(DictModel(net), output=lambda o: o["logits"])(x), want)

    class WithAttr(nn.Module):
        def forward(self, z):
            return type("Out", (), {"logits": net(z)})()

    assert torch.equal(ModelCall(WithAttr(), output="logits")(x), want)


@pytest.mark.parametrize("wrap", [DictModel, TupleModel])
def test_non_tensor_output_needs_a_selector(wrap):
    with pytest.raises(TypeError, match="output="):
        ModelCall(wrap(MLP()))(torch.rand(2, 12, dtype=DTYPE))


def test_batch_size_mismatch_is_an_error():
    class Collapse(nn.Module):
        def forward(self, z):
            return z.sum(dim=0, keepdim=True)

    with pytest.raises(ValueError, match="mapped 3 inputs to 1 outputs"):
        ModelCall(Collapse())(torch.rand(3, 4))


def test_eval_mode_restores_mixed_modes_even_after_an_error():
    net = ConvNet()
    net.train()
    net.bn.eval()
    before = modes(net)
    assert any(before) and not all(before)
    with eval_mode(net):
        assert not any(modes(net))
    assert modes(net) == before
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert modes(net) == before
    net.eval()
    with eval_mode(net):
        pass
    assert not any(modes(net))


def test_check_scores():
    check_scores(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"scores \(N, K\)"):
        check_scores(torch.randn(3))
    with pytest.raises(ValueError, match=r"output shape \(3, 1\)"):
        check_scores(torch.randn(3, 1))
    with pytest.raises(ValueError, match=r"\(3, 2, 2\)"):
        check_scores(torch.randn(3, 2, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        check_scores(torch.tensor([[0.0, float("nan")]]))
    with pytest.warns(UserWarning, match="probabilities"):
        check_scores(torch.randn(3, 4).softmax(dim=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_scores(torch.randn(3, 4).softmax(dim=1) * 0.9)  # rows do not sum to 1
        check_scores(torch.randn(3, 4) + 10)  # positive logits


def test_preprocess_channel_count_must_fit_the_inputs():
    """3 channel statistics on 1-channel inputs: an error naming preprocess, not a silent broadcast (issue 18)."""
    from pertattack import Model

    class Gray(nn.Module):  # (N, 1, 4, 4) -> (N, 2); would take a broadcast (N, 3, 4, 4) without a word
        def forward(self, z):
            return z.flatten(2).mean(2)[:, :2] if z.shape[1] > 1 else torch.cat([z.flatten(1)[:, :1]] * 2, 1)

    x = torch.rand(2, 1, 4, 4, dtype=DTYPE)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match=r"preprocess mean has 3 channel statistics, but the inputs of shape "
                                         r"\(2, 1, 4, 4\) have 1 channels"):
        Model(Gray(), preprocess=imagenet)(x)
    with pytest.raises(ValueError, match="preprocess mean has 3 channel statistics"):
        Model(MLP(), preprocess=imagenet)(torch.rand(2, 12, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"preprocess \(mean, std\) does not fit inputs of shape"):
        Model(Gray(), preprocess=(torch.zeros(2, 2), torch.ones(2, 2)))(x)
    assert Model(Gray(), preprocess=((0.5,), (0.25,)))(x).shape == (2, 2)  # one per channel
    assert Model(ConvNet().eval(), preprocess=((0.4, 0.6), (0.2, 0.3)))(rand_x(2, CONV_SHAPE)).shape[0] == 2


def test_output_that_names_no_part_is_a_clear_error():
    from pertattack import Model

    x = torch.rand(2, 12, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"output=5 names no part of what the model returned: a tuple of 2 "
                                         r"\(indices 0 to 1\)"):
        Model(TupleModel(MLP()), output=5)(x)
    with pytest.raises(ValueError, match=r"output='logit' .* a dict with keys \['features', 'logits'\]"):
        Model(DictModel(MLP()), output="logit")(x)
    with pytest.raises(ValueError, match=r"output='logits' .* a tensor of shape \(2, 4\)"):
        Model(MLP(), output="logits")(x)
