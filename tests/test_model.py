"""The network is the paper's: parameter count, feature-map sizes, LRN formula, initialisation."""

import pytest
import torch

import kernels
from alexnet.model import AlexNet
from tests.reference import lrn_paper_float64


def test_parameter_count_is_the_papers():
    assert sum(p.numel() for p in AlexNet().parameters()) == 60_965_224


def test_feature_map_shapes():
    model = AlexNet(num_classes=10).eval()
    activations = {}
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 227, 227), activations)
    sizes = {name: tuple(t.shape[1:]) for name, t in activations.items()}
    assert sizes == {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
                     "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                     "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,),
                     "fc8": (10,)}
    assert logits.shape == (1, 10)


def test_two_towers_are_grouped_convolutions():
    model = AlexNet()
    assert [model.conv1.groups, model.conv2.groups, model.conv3.groups, model.conv4.groups,
            model.conv5.groups] == [1, 2, 1, 2, 2]
    # Each tower's conv2 kernels see only the 48 maps of their own tower.
    assert model.conv2.weight.shape == (256, 48, 5, 5)


@pytest.mark.parametrize("shape", [(2, 96, 55, 55), (1, 256, 27, 27), (3, 7, 4, 5)])
def test_torch_lrn_is_the_papers_formula(shape):
    # Inputs on the scale conv1 produces from raw pixels (tens), so alpha * sum(a^2) matters.
    a = torch.randn(shape, dtype=torch.float64) * 30
    got = kernels.backend("torch").lrn(a)
    want = lrn_paper_float64(a, size=5, alpha=1e-4, beta=0.75, k=2.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg="[lrn] torch backend vs paper formula")
    # And it is not the identity or PyTorch's default convention (alpha / n).
    assert not torch.allclose(got, a / 2.0 ** 0.75)
    assert not torch.allclose(got, torch.nn.functional.local_response_norm(a, 5, 1e-4, 0.75, 2.0))


@pytest.mark.parametrize("init", ["paper", "caffe"])
def test_initialisation(init):
    """paper: weights N(0, 0.01), biases 1 in conv2, 4, 5, fc6, 7; caffe: those biases 0.1 and fc6, fc7 N(0, 0.005)."""
    torch.manual_seed(0)
    model = AlexNet(init=init) if init != "paper" else AlexNet()  # the paper's is the default
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(model, name)
        w = layer.weight.detach()
        std = 0.005 if init == "caffe" and name in ("fc6", "fc7") else 0.01
        # >= 34,848 samples a layer: the sample mean's spread is < 5.4e-5 and the sample std's < 3.8e-5,
        # so 3e-4 is > 5 sigma of noise yet far below a wrong init (0.01 vs 0.005, or PyTorch's default).
        assert abs(w.mean().item()) < 3e-4, f"[{init} {name}.weight] mean {w.mean().item()}"
        assert abs(w.std().item() - std) < 3e-4, f"[{init} {name}.weight] std {w.std().item()}, want {std}"
        want = (1.0 if init == "paper" else 0.1) if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == want), f"[{init} {name}.bias] should be all {want}"


def test_unknown_init_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown init 'kaiming'"):
        AlexNet(init="kaiming")


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, 227, 227\), got \(1, 3, 224, 224\)"):
        AlexNet(num_classes=10)(torch.randn(1, 3, 224, 224))


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernels backend 'cudnn'"):
        AlexNet(kernels="cudnn")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_input_form_gives_the_logits_of_the_images(backend):
    """forward(input_form(images), input_form=True) is forward(images cast): on triton the form is conv1's
    space-to-depth input (made and cast in one pass), elsewhere the cast images."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, kernels=backend).eval()
    images = torch.randn(1, 3, 227, 227).half().contiguous(memory_format=torch.channels_last)  # DALI's
    form = model.input_form(images, dtype=torch.float32)
    assert form.shape == ((1, 48, 57, 57) if backend == "triton" else images.shape) and form.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(form, input_form=True), model(images.float()))
    with pytest.raises(ValueError, match=r"\(N, 3, 227, 227\), got \(1, 3, 224, 224\)"):
        model.input_form(torch.randn(1, 3, 224, 224))
    out = torch.empty_like(form)
    assert model.input_form(images, torch.float32, out=out) is out and torch.equal(out, form)
    with pytest.raises(ValueError, match="conv2d_relu_input: out must be a"):
        model.input_form(images, torch.float32, out=out.half())


def test_a_backend_of_three_ops_takes_its_input_as_it_is():
    """A Backend built from the three ops alone (as before the input form): its input form is x cast."""
    ops = kernels.backend("torch")
    x = torch.randn(2, 3, 5, 5)
    three = kernels.Backend("mine", ops.conv2d_relu, ops.lrn, ops.max_pool2d)
    assert torch.equal(three.conv2d_relu_input(x, (4, 3, 3, 3), dtype=torch.float16), x.half())
