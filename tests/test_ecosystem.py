"""Models from the ecosystem (issue 19): ``timm:NAME`` and ``robustbench:NAME`` model specs, and Hugging Face
style outputs (an object with ``.logits``) through the output selector.

timm 1.0 and RobustBench 1.1 both import torchvision (``import timm`` does, RobustBench through timm and its data
loaders), which this project does not install. The spec code is therefore tested against small stand-in packages
written by the tests, with the calls that timm and RobustBench document (``timm.create_model(name, pretrained=)``
and a ``pretrained_cfg`` with ``mean``/``std``; ``robustbench.utils.load_model(model_name=, model_dir=, dataset=,
threat_model=)``, which reads ``model_dir/dataset/threat_model/NAME.pt``). Where the real packages are installed,
``test_the_stand_ins_call_what_the_real_packages_define`` checks those names against their source (without
importing them); it is skipped otherwise.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pertattack import Model, get_attack
from pertattack.cli import main
from pertattack.specs import UsageError, load_model_spec

STUB_TIMM = '''
import torch
from torch import nn

calls = []


class Tiny(nn.Module):
    """A timm-like model of the 8x8 digits: one linear layer and a pretrained_cfg with (mean, std)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.pretrained_cfg = {"mean": (0.25,), "std": (0.5,), "input_size": (1, 8, 8)}

    def forward(self, x):
        return self.fc(x.flatten(1))


def create_model(model_name, pretrained=False, **kwargs):
    calls.append((model_name, pretrained))
    if model_name != "tiny":
        raise RuntimeError(f"Unknown model ({model_name})")
    torch.manual_seed(1)
    return Tiny()
'''

STUB_ROBUSTBENCH_UTILS = '''
from pathlib import Path

import torch
from torch import nn

calls = []


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


ZOO = {("cifar10", "L2"): {"Tiny": Tiny}}


def load_model(model_name, model_dir="./models", dataset="cifar10", threat_model="Linf"):
    calls.append((model_name, str(model_dir), dataset, threat_model))
    model = ZOO[(dataset, threat_model)][model_name]()
    path = Path(model_dir) / dataset / threat_model / f"{model_name}.pt"
    if not path.is_file():
        raise OSError(f"{path} is not there and this stand-in never downloads")
    model.load_state_dict(torch.load(path, map_location="cpu")["state_dict"])
    return model.eval()
'''


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in ``timm`` and ``robustbench`` packages first on sys.path (the real ones, if any, hidden)."""
    root = tmp_path / "site"
    (root / "timm").mkdir(parents=True)
    (root / "timm" / "__init__.py").write_text(STUB_TIMM)
    (root / "robustbench").mkdir()
    (root / "robustbench" / "__init__.py").write_text("")
    (root / "robustbench" / "utils.py").write_text(STUB_ROBUSTBENCH_UTILS)
    for name in ("timm", "robustbench", "robustbench.utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("timm", "robustbench", "robustbench.utils"):
        sys.modules.pop(name, None)


def _digits() -> tuple[Tensor, Tensor]:
    torch.manual_seed(0)
    return torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))


def test_timm_weights_file_and_pretrained_normalisation(stubs: Path, tmp_path: Path) -> None:
    import timm

    torch.manual_seed(5)
    want = timm.Tiny()
    want.fc.weight.data.normal_()
    torch.save(want.state_dict(), tmp_path / "w.pt")
    model = load_model_spec("timm:tiny", weights=str(tmp_path / "w.pt"))
    assert isinstance(model, Model) and not model.training
    assert timm.calls == [("tiny", False)]  # --weights: timm builds the architecture only
    assert torch.equal(model.model.fc.weight, want.fc.weight)
    x, _ = _digits()
    assert torch.equal(model(x), want((x - 0.25) / 0.5))  # raw pixels in: its pretrained_cfg's (mean, std) inside
    load_model_spec("timm:tiny")
    assert timm.calls[-1] == ("tiny", True)  # no --weights: timm's pretrained weights (from its own cache)
    torch.save({"state_dict": want.state_dict()}, tmp_path / "ckpt.pt")  # a checkpoint holding a state dict
    assert torch.equal(load_model_spec("timm:tiny", weights=str(tmp_path / "ckpt.pt")).model.fc.bias, want.fc.bias)


@pytest.mark.parametrize(("spec", "options", "message"), [
    ("timm:nope", {}, "timm:nope: timm could not build it (Unknown model (nope))"),
    ("timm:", {}, "expected timm:NAME"),
    ("timm:tiny", {"weights": "missing.pt"}, "--weights missing.pt: no such file"),
    ("timm:tiny", {"weights": "{bad}"}, "not a state dict of timm's tiny"),
    ("timm:tiny", {"model_dir": "m"}, "--model-dir goes with robustbench:NAME only, not with --model timm:tiny"),
    ("eval_callables:centroids", {"weights": "w.pt"}, "--weights goes with timm:NAME only"),
    ("robustbench:Tiny", {"threat_model": "linf"}, "--threat-model must be one of Linf, L2, corruptions"),
    ("robustbench:Tiny", {"dataset": "mnist"}, "--model-dataset must be one of cifar10, cifar100, imagenet"),
    ("robustbench:Nope", {"threat_model": "L2"}, "RobustBench has no model 'Nope' for cifar10 / L2"),
    ("robustbench:", {}, "expected robustbench:NAME"),
])
def test_ecosystem_spec_errors(spec: str, options: dict[str, str], message: str, stubs: Path, tmp_path: Path
                               ) -> None:
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    options = {k: v.format(bad=tmp_path / "bad.pt") for k, v in options.items()}
    with pytest.raises(UsageError, match=None) as err:
        load_model_spec(spec, **options)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("spec", ["timm:resnet50", "robustbench:Standard"])
def test_an_absent_package_says_what_to_install(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("timm", "robustbench", "robustbench.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when the package is not installed
    package = spec.split(":")[0]
    with pytest.raises(UsageError, match=rf"--model {spec}: needs the optional package {package} .*pip install "
                                         rf"{package} torchvision"):
        load_model_spec(spec)


def test_robustbench_reads_the_model_dir_layout(stubs: Path, tmp_path: Path) -> None:
    from robustbench import utils

    torch.manual_seed(3)
    want = utils.Tiny()
    (tmp_path / "zoo" / "cifar10" / "L2").mkdir(parents=True)
    torch.save({"state_dict": want.state_dict()}, tmp_path / "zoo" / "cifar10" / "L2" / "Tiny.pt")
    model = load_model_spec("robustbench:Tiny", threat_model="L2", model_dir=str(tmp_path / "zoo"))
    assert utils.calls == [("Tiny", str(tmp_path / "zoo"), "cifar10", "L2")]
    assert torch.equal(model.fc.weight, want.fc.weight) and not model.training
    load_model_spec("robustbench:Tiny", threat_model="L2", model_dir=str(tmp_path / "zoo"), dataset="cifar10")


def test_cli_takes_the_ecosystem_options(stubs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run and evaluate pass --weights (and the robustbench options) to the spec; a stray one is a usage error."""
    import timm

    pytest.importorskip("sklearn")
    torch.save(timm.Tiny().state_dict(), tmp_path / "w.pt")
    assert main(["run", "fgsm", "--model", "timm:tiny", "--weights", str(tmp_path / "w.pt"), "--data", "digits",
                 "--n", "20", "--eps", "0.1", "--device", "cpu"]) == 0
    assert "eps 0.1: fooling ratio" in capsys.readouterr().out
    assert main(["evaluate", "--model", "timm:tiny", "--weights", str(tmp_path / "w.pt"), "--data", "digits",
                 "--attack", "fgsm", "--eps", "0.1", "--limit", "20", "--device", "cpu", "--out",
                 str(tmp_path / "ev"), "--no-progress"]) == 0
    assert timm.calls == [("tiny", False), ("tiny", False)]
    (tmp_path / "zoo" / "cifar10" / "L2").mkdir(parents=True)
    from robustbench import utils

    torch.save({"state_dict": utils.Tiny().state_dict()}, tmp_path / "zoo" / "cifar10" / "L2" / "Tiny.pt")
    assert main(["run", "fgsm", "--model", "robustbench:Tiny", "--threat-model", "L2", "--model-dataset", "cifar10",
                 "--model-dir", str(tmp_path / "zoo"), "--data", "digits", "--n", "20", "--eps", "0.1",
                 "--device", "cpu"]) == 0
    assert utils.calls == [("Tiny", str(tmp_path / "zoo"), "cifar10", "L2")]
    capsys.readouterr()
    assert main(["run", "fgsm", "--model", "timm:tiny", "--threat-model", "L2", "--data", "digits"]) == 2
    assert "--threat-model goes with robustbench:NAME only" in capsys.readouterr().err


def _signature(package: str, relative: str, function: str) -> list[str]:
    """The argument names of ``function`` in an installed package's source, read without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed")
    tree = ast.parse((Path(spec.origin).parent / relative).read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return [a.arg for a in node.args.args + node.args.kwonlyargs]


@pytest.mark.parametrize(("package", "relative", "function", "used"), [
    ("timm", "models/_factory.py", "create_model", ["model_name", "pretrained"]),
    ("robustbench", "utils.py", "load_model", ["model_name", "model_dir", "dataset", "threat_model"]),
])
def test_the_stand_ins_call_what_the_real_packages_define(package: str, relative: str, function: str,
                                                          used: list[str]) -> None:
    names = _signature(package, relative, function)
    assert all(u in names for u in used), (package, names)


# --- Hugging Face image classifiers: forward returns a ModelOutput (an OrderedDict subclass with attributes) ----


class ModelOutputLike(OrderedDict):
    """What transformers' ``ModelOutput`` is: a dict whose non-None fields are keys and attributes alike."""

    def __init__(self, **fields: Tensor | None) -> None:
        super().__init__((k, v) for k, v in fields.items() if v is not None)
        for k, v in fields.items():
            object.__setattr__(self, k, v)


@dataclass
class DataclassOutput:
    """An output that is only a dataclass (attributes, no keys)."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class HFLike(nn.Module):
    """Shaped like ``AutoModelForImageClassification``: forward(pixel_values) -> output with .logits."""

    def __init__(self, output_type: type) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.output_type = output_type

    def forward(self, pixel_values: Tensor) -> object:
        return self.output_type(logits=self.fc(pixel_values.flatten(1)), hidden_states=None)


@pytest.mark.parametrize("output_type", [ModelOutputLike, DataclassOutput])
def test_hugging_face_style_output(output_type: type) -> None:
    net = HFLike(output_type)
    x, y = _digits()
    model = Model(net, preprocess=(0.5, 0.5), output="logits")
    assert torch.equal(model(x), net.fc(((x - 0.5) / 0.5).flatten(1)))
    res = get_attack("pgd", eps=0.1, steps=3, seed=0)(model, x, y)
    ref = get_attack("pgd", eps=0.1, steps=3, seed=0)(_Plain(net), x, y)
    assert torch.equal(res.x_adv, ref.x_adv)
    with pytest.raises(TypeError, match="pass output="):
        get_attack("fgsm", eps=0.1)(net, x, y)


class _Plain(nn.Module):
    """The same scores from a plain tensor-returning module (the reference)."""

    def __init__(self, net: HFLike) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.fc(((x - 0.5) / 0.5).flatten(1))


def test_a_key_that_is_only_an_attribute_or_a_none_field_is_explained() -> None:
    """``hidden_states`` is None (so no key of the ModelOutput): the error lists what there is."""
    x, _ = _digits()
    with pytest.raises(ValueError, match=r"output='hidden_states' names no part of what the model returned: "
                                         r"a ModelOutputLike with keys \['logits'\]"):
        Model(HFLike(ModelOutputLike), output="hidden_states")(x)
    with pytest.raises(ValueError, match=r"output='logit' .* a DataclassOutput with fields \['logits', "
                                         r"'hidden_states'\]"):
        Model(HFLike(DataclassOutput), output="logit")(x)
