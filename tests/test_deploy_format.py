"""The .bnn file format: round trip, and refusal of corrupt, truncated, wrong-version and
inconsistent files with a one-line DeployFormatError before any native code runs."""
import ast
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import bnnkit
from bnnkit import deploy
from bnnkit.deploy import DeployExportError, DeployFormatError
from bnnkit.deploy._format import graph_digest, tensor_digest


def randomize(model, seed=0):
    """Random BN statistics/affine and alphas, so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            if isinstance(getattr(m, "alpha", None), torch.Tensor):
                m.alpha.copy_(torch.rand(m.alpha.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(bnnkit.create_model("resnet20_1w1a", method="siman"))
    path = tmp_path_factory.mktemp("fmt") / "r20.bnn"
    deploy.export(model, path, example_input_shape=(1, 3, 32, 32))
    return model, path


def rewrite(src: Path, dst: Path, edit_graph=None, edit_tensors=None, meta=None):
    """Copy a .bnn with edits, keeping the checksums valid so deeper checks are reached."""
    with safe_open(str(src), framework="pt") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    graph = json.loads(md["graph"])
    if edit_graph:
        edit_graph(graph)
    if edit_tensors:
        edit_tensors(tensors)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    graph["digests"] = {k: tensor_digest(v) for k, v in tensors.items()}
    md["graph"] = json.dumps(graph)
    md["graph_sha256"] = graph_digest(md["graph"])
    md.update(meta or {})
    save_file(tensors, str(dst), metadata=md)
    return dst


def node(graph, op, index=0):
    return [n for n in graph["nodes"] if n["op"] == op][index]


def refuse(path, match):
    with pytest.raises(DeployFormatError, match=match) as info:
        deploy.load(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_round_trip_matches_model(exported):
    model, path = exported
    net = deploy.load(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    out = net(x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-4
    assert not out.requires_grad and torch.is_inference(out)
    assert net.meta["source"]["model"] == "resnet20_1w1a" and net.meta["version"] == deploy.FORMAT_VERSION
    with pytest.raises(ValueError, match=r"input must have shape \(N, 3, 32, 32\)"):
        net(torch.randn(1, 3, 30, 32))


def test_truncated_file(exported, tmp_path):
    data = exported[1].read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        p = tmp_path / f"cut{cut}.bnn"
        p.write_bytes(data[:cut])
        assert "re-export" in refuse(p, "corrupt or truncated")


def test_corrupt_tensor_bytes(exported, tmp_path):
    data = bytearray(exported[1].read_bytes())
    data[-100] ^= 0xFF
    p = tmp_path / "flip.bnn"
    p.write_bytes(bytes(data))
    refuse(p, "does not match its checksum")


def test_not_a_bnn_file(tmp_path):
    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    refuse(p, "not a bnnkit deployment file")
    p2 = tmp_path / "noise.bnn"
    p2.write_bytes(b"\x00\x01garbage" * 10)
    refuse(p2, "corrupt or truncated")
    refuse(tmp_path / "missing.bnn", "no such file")


def test_wrong_version(exported, tmp_path):
    newer = rewrite(exported[1], tmp_path / "v4.bnn", meta={"format_version": "4"})
    assert "upgrade bnnkit" in refuse(newer, "format version 4, this bnnkit reads version 3")
    for old in ("1", "2"):  # both digest only their tensors
        older = rewrite(exported[1], tmp_path / f"v{old}.bnn", meta={"format_version": old})
        assert "re-export" in refuse(older, f"format version {old} has no graph checksum")


def edit_header(src: Path, dst: Path, edit) -> Path:
    """Copy a .bnn with its header JSON edited in place (the 8-byte little-endian length
    rewritten, the tensor bytes untouched): what a hand edit of the file does."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return dst


def test_edited_graph_digit_is_refused(exported, tmp_path):
    """One changed digit of a BatchNorm eps in the header: the tensors' digests still match,
    the graph's does not."""
    def one_digit(header):
        md = header["__metadata__"]
        eps = json.dumps(node(json.loads(md["graph"]), "batchnorm")["attrs"]["eps"])
        assert md["graph"].count(f'"eps":{eps}') >= 1 and "1" in eps
        md["graph"] = md["graph"].replace(f'"eps":{eps}', f'"eps":{eps.replace("1", "2", 1)}', 1)
    edited = edit_header(exported[1], tmp_path / "eps.bnn", one_digit)
    assert edited.read_bytes() != exported[1].read_bytes()
    assert "re-export" in refuse(edited, "its graph does not match its checksum")
    # the same file with its header rewritten unchanged loads: the refusal is the edit's
    deploy.load(edit_header(exported[1], tmp_path / "same.bnn", lambda h: None))

    def drop_digest(header):
        del header["__metadata__"]["graph_sha256"]
    refuse(edit_header(exported[1], tmp_path / "nodigest.bnn", drop_digest), "lacks its graph checksum")


@pytest.mark.parametrize("edit, match", [
    # a real conv's groups: its weight [O, C/g, kh, kw] no longer fits its input
    (lambda g: node(g, "conv")["attrs"].update(groups=2), r"node '.*' \(conv\) cannot run on the file's input shape"),
    (lambda g: node(g, "batchnorm")["attrs"].update(eps=0.0), r"eps must be a positive finite number, got 0.0"),
    (lambda g: node(g, "batchnorm")["attrs"].update(eps=-1e-5), r"eps must be a positive finite number"),
    # 32 input channels fit the same packed words as 16
    (lambda g: node(g, "bconv")["attrs"].update(in_channels=32), r"\(bconv\) cannot run .* expects \(N, 32, H, W\) input"),
    # flatten(2) of the pooled (N, 64, 1, 1): BatchNorm1d takes the (N, 64, 1), the classifier does not
    (lambda g: node(g, "method", -1)["args"].__setitem__(1, 2), r"\(linear\) cannot run on the file's input shape"),
    (lambda g: node(g, "call", -1).update(attrs={"fn": "torch.cat"}), r"\(call\) cannot run on the file's input shape"),
], ids=["conv-groups", "eps-zero", "eps-negative", "bconv-channels", "flatten-dim", "wrong-function"])
def test_consistently_checksummed_bad_graph_is_refused_at_load(exported, tmp_path, edit, match):
    """Attributes that pass the per-node checks but do not fit together: refused by load with
    one line, not as a RuntimeError on the first call."""
    msg = refuse(rewrite(exported[1], tmp_path / "bad.bnn", edit_graph=edit), match)
    assert "re-export" in msg and msg.count("re-export") == 1


@pytest.mark.parametrize("edit, match", [
    (lambda g: node(g, "bconv")["attrs"].update(in_channels=130), r"shape .* expected"),
    (lambda g: node(g, "bconv")["attrs"].update(kernel=[3, 2]), r"expected"),
    (lambda g: node(g, "bconv")["attrs"].update(stride=[0, 1]), r"'stride' must be 2 integer"),
    (lambda g: node(g, "bconv")["attrs"].update(groups=3), r"not divisible by groups"),
    (lambda g: node(g, "bconv")["tensors"].update(weight="nope"), r"not in the file"),
    (lambda g: node(g, "bconv").update(op="mystery"), r"unknown operation 'mystery'"),
    (lambda g: node(g, "call").update(attrs={"fn": "os.system"}), r"calls 'os.system', which the runtime does not provide"),
    (lambda g: node(g, "method").update(attrs={"method": "__class__"}), r"tensor method '__class__'"),
    (lambda g: node(g, "bconv", 3).update(args=[{"ref": g["nodes"][-1]["name"]}]), r"not an earlier node"),
    (lambda g: g["nodes"].pop(0), r"must start with its input node"),
    (lambda g: g.update(input_shape=[1, 3, -32, 32]), r"input_shape"),
    (lambda g: node(g, "batchnorm").update(attrs={"eps": "x"}), r"eps must be"),
], ids=["channels", "kernel", "stride", "groups", "tensor-name", "op", "function", "method", "forward-ref",
        "no-input", "input-shape", "eps"])
def test_inconsistent_graph_is_refused(exported, tmp_path, edit, match):
    refuse(rewrite(exported[1], tmp_path / "bad.bnn", edit_graph=edit), match)


def test_inconsistent_tensors_are_refused(exported, tmp_path):
    path = exported[1]
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["graph"])
    bc = node(meta, "bconv")
    wname, sname = bc["tensors"]["weight"], bc["tensors"]["scale"]

    def bad_shape(t):
        t[wname] = t[wname][:, :8]
    refuse(rewrite(path, tmp_path / "a.bnn", edit_tensors=bad_shape), r"has shape .* expected")

    def bad_dtype(t):
        t[sname] = t[sname].double()
    refuse(rewrite(path, tmp_path / "b.bnn", edit_tensors=bad_dtype), r"dtype torch.float64, expected torch.float32")

    def stray_bits(t):  # 16 channels per group use 16 bits of each word; set bit 40
        w = t[wname].clone()
        w[0, 0, 0] |= 1 << 40
        t[wname] = w
    refuse(rewrite(path, tmp_path / "c.bnn", edit_tensors=stray_bits), r"bits set beyond channel")

    def bad_zeros(t):
        t[f"{bc['name']}.zeros"] = torch.tensor([[0, 99, 0, 0]], dtype=torch.int32)

    def add_zeros(g):
        node(g, "bconv")["tensors"]["zeros"] = f"{bc['name']}.zeros"
    refuse(rewrite(path, tmp_path / "d.bnn", edit_graph=add_zeros, edit_tensors=bad_zeros), r"zero weights has rows outside")


def test_export_refuses_what_it_cannot_represent(tmp_path):
    stage1 = bnnkit.create_model("resnet20_1w1a", method="biper", stage=1)
    with pytest.raises(DeployExportError, match="stage 2"):
        deploy.export(stage1, tmp_path / "s1.bnn", example_input_shape=(1, 3, 32, 32))

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = bnnkit.create_model("resnet20_1w1a", method="biper", stage=2).layer1[0].conv1
            self.gelu = torch.nn.GELU()

        def forward(self, x):
            return self.gelu(self.conv(x))
    with pytest.raises(DeployExportError, match="GELU"):
        deploy.export(Odd(), tmp_path / "odd.bnn", example_input_shape=(1, 16, 8, 8))


# _affine: the runtime rounds a stem BatchNorm's constants as the exporter rounds the binary convs'
RUNTIME_MODULES = ["deploy/_runtime.py", "deploy/_format.py", "deploy/_ops.py", "deploy/_errors.py",
                   "native/kernels.py", "native/bits.py", "native/affine.py", "errors.py"]


def test_runtime_does_not_import_training_code():
    """The runtime modules import only torch, safetensors, numpy and each other (the native kernels'
    bindings, the errors), never the training code."""
    pkg = Path(deploy.__file__).parents[1]
    allowed = {"bnnkit." + m[:-3].replace("/", ".") for m in RUNTIME_MODULES}
    packages = {"bnnkit", "bnnkit.deploy", "bnnkit.native"}  # `from . import x` imports x
    for name in RUNTIME_MODULES:
        here = ["bnnkit", *name[:-3].split("/")][:-1]
        tree = ast.parse((pkg / name).read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                base = ".".join(here[: len(here) - n.level + 1]) if n.level else ""
                mod = ".".join(p for p in (base, n.module) if p)
                if not mod.startswith("bnnkit"):
                    continue
                targets = {f"{mod}.{a.name}" for a in n.names} if mod in packages else {mod}
                assert targets <= allowed, f"{name} imports {sorted(targets - allowed)}"
            elif isinstance(n, ast.Import):
                for a in n.names:
                    assert not a.name.startswith("bnnkit") or a.name in allowed, f"{name} imports {a.name}"
