"""The contract every network meets, ours and one only this test knows: what is derived from build(width)
is what the module is, a permutation of any group keeps the logits, the exported graph computes what torch
computes at every width, and a served file equals the torch network synthesised at that width. And what is
refused, in one line."""

import re
import textwrap

import numpy as np
import pytest
import torch

from neumeta_core import export, files, permute, structure, train
from neumeta_core.builders import RECIPES
from neumeta_core.checkpoint import Checkpoint, Data
from neumeta_core.config import HyperNetConfig, TargetConfig, TrainConfig
from neumeta_core.errors import InputError
from neumeta_core.hypernet import HyperNetwork
from neumeta_core.sampling import MorphicNet
from service.cli import main

# a network no module of the repository knows: BatchNorm, a residual add, a depthwise convolution,
# a Linear hidden layer, Sequential containers and functional pooling
THEIRS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, groups=w), nn.BatchNorm2d(w))
        self.expand = nn.Conv2d(w, 3 * w, 1)
        self.hidden = nn.Linear(3 * w, w + 4)
        self.out = nn.Linear(w + 4, 10)

    def forward(self, x):
        x = self.features(x)
        x = torch.relu(x + self.dw(x))
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.expand(x)), 1).flatten(1)
        return self.out(torch.relu(self.hidden(x)))


def build(width):
    return Net(width)
"""


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "their_net.py"
    path.write_text(THEIRS)
    return f"{path}:build"


def _input(ref):
    return (3, 32, 32) if "resnet" in ref else (1, 8, 8)


REFS = [RECIPES[name][0] for name in RECIPES] + ["theirs"]


@pytest.fixture(params=REFS, ids=[r.rpartition(":")[2] for r in REFS])
def network(request, theirs):
    ref = theirs if request.param == "theirs" else request.param
    widths = [3, 4, 9, 16] if "resnet" not in ref else [8, 9, 40, 64]
    build = structure.load_builder(ref)
    derived, graphs, dropped = structure.derive(build, ref, max(widths), widths, _input(ref), 10)
    return build, derived, graphs, dropped, widths, ref


def test_derived_shapes_are_the_modules(network):
    build, derived, _, dropped, widths, _ = network
    assert not dropped
    for width in [*widths, max(widths) + 3]:
        module = build(width)
        assert {n: tuple(t.shape) for n, t in module.state_dict().items()} == {
            n: r.at(width) for n, r in derived.rules.items()
        }
        assert set(derived.generated) <= {n for n, _ in module.named_parameters()}
    owners = {n.rpartition(".")[0] for n, r in derived.rules.items() if r.axes}
    assert derived.generated and all(n.rpartition(".")[0] in owners for n in derived.generated)


def test_a_permutation_of_any_group_keeps_the_logits(network):
    build, derived, _, _, widths, ref = network
    model = structure._randomise(build(max(widths)), 5)
    state = dict(model.state_dict())
    x = torch.rand(6, *_input(ref))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        expected = model(x)
        assert derived.groups
        for group in derived.groups.values():
            first, axis, factor = group[0]
            order = torch.randperm(state[first].shape[axis] // factor, generator=gen).tolist()
            got = torch.func.functional_call(model, permute.apply_order(state, group, order), (x,))
            assert float((got - expected).abs().max() / expected.abs().max().clamp_min(1)) <= 1e-5
    members = {(t, a) for g in derived.groups.values() for t, a, _ in g}
    first_conv = next(n for n in derived.rules if n.endswith("weight"))
    assert (first_conv, 1) not in members  # the input channels never move


def test_the_exported_graph_equals_torch_at_several_widths(network):
    build, derived, graphs, _, widths, ref = network
    x = torch.rand(5, *_input(ref))
    for width in widths:
        model = structure._randomise(build(width), 100 + width)
        body = export.to_onnx(graphs[width], model.state_dict())
        with torch.no_grad():
            assert export.verify(body, model(x).numpy(), x.numpy()) <= 1e-4, width
        ops = {n.op_type for n in export.onnx.load_from_string(body).graph.node}
        assert "BatchNormalization" not in ops or not derived.folds


def test_a_served_file_equals_the_torch_network_synthesised_at_that_width(network):
    """An untrained hypernetwork is enough: whatever it generates, the file computes what torch does."""
    build, derived, graphs, _, widths, ref = network
    target = TargetConfig(model=ref, max_width=max(widths), train_min_width=min(widths), min_width=min(widths))
    hyper = HyperNetwork(HyperNetConfig(hidden=16, layers=2, frequencies=2), len(derived.generated), max(widths))
    full = build(max(widths)).state_dict()
    fixed = {k: v for k, v in full.items() if k not in derived.generated and k not in derived.statistics}
    graphs = {w: graphs[w] for w in widths}
    morph = MorphicNet(target, derived, hyper, fixed, {}, graphs, samples=2, noise=1.0)
    calibration = torch.rand(32, *_input(ref)) if derived.statistics else None
    reference = {}
    with morph.allowing(min(widths)):
        for width in widths:
            model = build(width)
            model.load_state_dict(morph.state_dict(width), strict=False)
            if calibration is not None:
                train.recalibrate(model, calibration)
                morph.statistics.setdefault(2, {})[width] = {n: model.state_dict()[n] for n in derived.statistics}
            reference[width] = model.eval()(torch.rand(8, *_input(ref), generator=torch.Generator().manual_seed(0)))
    logits = {2: {w: r.detach().numpy() for w, r in reference.items()}}
    about = Data("test", _input(ref), [str(i) for i in range(10)])
    ckpt = Checkpoint(
        morph, target, hyper.cfg, TrainConfig(samples=2), {}, None, {}, {}, "0" * 64, about, logits, calibration
    )
    for width in widths:
        for dtype in ("float32", "float16"):
            built = files.build(ckpt, files.spec_for(ckpt, width, dtype=dtype))
            got = export.session(built.body).run(["logits"], {"input": ckpt.probe().numpy()})[0]
            tolerance = 1e-4 if dtype == "float32" else 2e-2
            assert export.relative(got, reference[width].detach().numpy()) <= tolerance
    with pytest.raises(files.ExportMismatch):  # and a file that computes something else is not served
        weights = export.served(graphs[widths[0]], morph.state_dict(widths[0]))
        files.verify(ckpt, files.spec_for(ckpt, widths[0]), built.body, weights, ckpt.probe())


@pytest.mark.parametrize(
    "source, says",
    [
        (
            "from torch import nn\ndef build(width):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n",
            "nothing follows the width",
        ),
        (
            textwrap.dedent("""
                import torch
                from torch import nn
                class Branchy(nn.Module):
                    def __init__(self, w):
                        super().__init__()
                        self.a, self.b = nn.Linear(64, w), nn.Linear(64, w)
                        self.out = nn.Linear(w, 10)
                    def forward(self, x):
                        x = x.flatten(1)
                        h = self.a(x) if float(x.sum()) > 0 else self.b(x)  # decided by the data
                        return self.out(torch.relu(h))
                def build(width):
                    return Branchy(width)
            """),
            "forward() takes a path the tracer cannot follow",
        ),
        (
            "from torch import nn\ndef build(width):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, width))\n",
            "the data set has 10 classes",
        ),
        ("def build(width):\n    return 'a network'\n", "not a torch.nn.Module"),
        ("def build(width)\n    pass\n", "syntax error"),
    ],
    ids=["width-independent", "untraceable", "wrong-classes", "not-a-module", "syntax-error"],
)
def test_a_network_the_service_cannot_serve_is_refused_at_train_in_one_line(source, says, tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text(source)
    out = tmp_path / "c.pt"
    assert main(["train", "--model", f"{path}:build", "--pretrain-epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neumeta train: ") and says in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    "ref, says",
    [
        ("examples/separable.py", "must be FILE.py:FUNCTION"),
        ("missing.py:build", "missing.py: no such file"),
        ("examples/separable.py:nothing", "defines no function 'nothing'"),
        ("no_such_package.mod:build", "no module named 'no_such_package'"),
    ],
)
def test_a_bad_model_reference_is_one_line(ref, says, capsys):
    assert main(["train", "--model", ref]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_a_generate_prefix_that_names_nothing_lists_the_modules(capsys):
    assert main(["train", "--model", "examples/separable.py:build", "--generate", "stem,nope"]) == 2
    err = capsys.readouterr().err
    assert "--generate nope" in err and "stem.0" in err


def test_only_the_modules_named_are_generated():
    build = structure.load_builder("examples/separable.py:build")
    derived, _, _ = structure.derive(build, "x", 16, [4, 8, 16], (1, 8, 8), 10, generate=("down", "head"))
    assert derived.generated == ["down.weight", "down.bias", "head.weight", "head.bias"]


def test_kernels_larger_than_3x3_get_a_wide_enough_hypernetwork_output():
    derived, _, _ = structure.derive(lambda w: _five(w), "x", 8, [2, 8], (1, 8, 8), 10)
    assert structure.kernel_size(derived, 8) == 25
    hyper = HyperNetwork(HyperNetConfig(hidden=8, layers=2, frequencies=1, output_dim=25), len(derived.generated), 8)
    out = hyper(list(derived.shapes(5).values()))
    assert out[0].shape == (5, 1, 5, 5) and np.isfinite(out[0].detach().numpy()).all()


def _five(width):
    class Five(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, width, 5, padding=2)
            self.fc = torch.nn.Linear(width, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.c(x)).mean(dim=(2, 3)))

    return Five()


def test_resolving_a_builder_needs_no_registry_entry(theirs):
    with pytest.raises(InputError, match="no such file"):
        structure.load_builder("elsewhere/net.py:build")
    assert structure.load_builder(theirs)(5).hidden.out_features == 9


def test_the_core_names_no_network_of_ours_and_writes_no_graph():
    """Our networks are users of the generic path: only neumeta_core/builders/ names them, and the exporter
    fills a graph exported by torch instead of writing one node by node."""
    from pathlib import Path

    from neumeta_core.builders import NAMES

    core = Path(structure.__file__).parent
    sources = {p: p.read_text() for p in core.glob("*.py")}
    for name in NAMES:
        # a word of its own: a data set's name such as fashion-mnist does not name the network fashion
        found = [p.name for p, text in sources.items() if re.search(rf"(?<![\w-]){name}(?![\w-])", text)]
        assert not found, (name, found)
    writer_ops = ("Conv", "Gemm", "Relu", "MaxPool", "GlobalAveragePool", "Add", "Flatten")
    assert not [op for op in writer_ops if f'make_node("{op}"' in sources[core / "export.py"]]
