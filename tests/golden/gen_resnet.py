"""PyTorch reference for tests/test_resnet.c (kiln/models.h), and the PyTorch side of the
ResNet interop check of tests/interop.sh.

torchvision is not needed: BasicBlock, Bottleneck and ResNet below are torchvision's
(torchvision/models/resnet.py, v1.5 Bottleneck with the stride on the 3x3 convolution) with
its attribute names, so their state_dict keys are torchvision's; ResNet20 is
shared/bench/torch_ref.py's CIFAR ResNet-20, verbatim.

  /usr/bin/python3 tests/golden/gen_resnet.py
      writes tests/golden/resnet.safetensors:
      - "counts.<model>": parameter counts of resnet18/34/50 (3 channels, 1000 classes) and
        ResNet20 (1 channel, 10 classes), asserted equal to torchvision's published ones,
        with their state_dict keys' order and shapes (see "<case>.order" below);
      - block cases (BasicBlock and Bottleneck, with and without downsample, train and
        eval): "<case>.state.<key>" (torch's initialisation, batch norm affine parameters
        and running statistics randomised), x, seed, y = block(x), grad.x and grad.<param>
        after y.backward(seed), after.<buffer> (running statistics after the forward);
      - network cases (ResNet-18 with both stems, train and eval; ResNet-20 one SGD step):
        weights, and the ResNet-18 inputs, from a formula both sides compute
        (formula_state, formula_input below; a 47 MB ResNet-18 state dict has no place in
        the repository); the output (and the seed of its gradient) in full; gradients,
        parameters after the step and buffers as "<case>.sub.<kind>.<key>" =
        t.flatten()[::stride] with "<case>.stride.<key>" (I32) the stride, so that every
        tensor is checked at <= 128 places (kind grad, key x: the input's gradient);
      - "<case>.order.<key>" (I32 vector): the key's index in torch's state_dict, for every
        case, followed by its shape for the network cases and the counted models.

  /usr/bin/python3 tests/golden/gen_resnet.py export PATH
      a torchvision-named ResNet-18 (3 channels, 1000 classes, torch's seeded initialisation,
      one training step so the running statistics are not the defaults), saved as
      PyTorch users save state dicts (F32, I64 num_batches_tracked), plus "x" and
      "y" = its eval-mode output in PATH.y.safetensors. tests/test_resnet --interop-load
      loads PATH strictly into kiln_resnet18 and checks y.

  /usr/bin/python3 tests/golden/gen_resnet.py check PATH
      loads a state dict kiln saved (tests/test_resnet --interop-save PATH) strictly into
      the torch ResNet-18 and compares its eval-mode output on PATH.y.safetensors's "x" with
      kiln's "y" there; exit status 1 when they differ.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from golden_io import save


# ---- torchvision's ResNet (torchvision/models/resnet.py), without torchvision ----------------

def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


def make_block(kind, inplanes, planes, stride):
    """A block with torchvision's _make_layer rule for the projection shortcut."""
    downsample = None
    if stride != 1 or inplanes != planes * kind.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * kind.expansion, stride),
                                   nn.BatchNorm2d(planes * kind.expansion))
    return kind(inplanes, planes, stride, downsample)


class ResNet(nn.Module):
    """torchvision's ResNet; small_stem: conv1 3x3/1 and no max pool (kiln's option)."""

    def __init__(self, block, layers, num_classes=1000, in_channels=3, small_stem=False):
        super().__init__()
        self.inplanes = 64
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = None if small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        layers = [make_block(block, self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kw):
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


def resnet34(**kw):
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


def resnet50(**kw):
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


# ---- shared/bench/torch_ref.py's ResNet20, verbatim -------------------------------------------

class RefBasicBlock(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        s.bn1 = nn.BatchNorm2d(cout)
        s.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        s.bn2 = nn.BatchNorm2d(cout)
        s.downsample = None
        if stride != 1 or cin != cout:
            s.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(s, x):
        y = F.relu(s.bn1(s.conv1(x)))
        y = s.bn2(s.conv2(y))
        return F.relu(y + (x if s.downsample is None else s.downsample(x)))


class ResNet20(nn.Module):
    def __init__(s, in_ch=1, classes=10):
        super().__init__()
        s.conv1, s.bn1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            layers.append(nn.Sequential(*[RefBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(3)]))
            cin = cout
        s.layer1, s.layer2, s.layer3 = layers
        s.fc = nn.Linear(64, classes)

    def forward(s, x):
        x = F.relu(s.bn1(s.conv1(x)))
        x = s.layer3(s.layer2(s.layer1(x)))
        return s.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---- the weight formula (tests/test_resnet.c: formula_fill computes the same) -----------------

def fnv1a(s):
    h = 2166136261
    for b in s.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def uniform01(salt, key, n):
    """n floats in [0, 1): murmur3's fmix32 of (fnv1a(salt/key) + i * 0x9E3779B9) mod 2^32,
    top 24 bits. Exact in float32 (multiples of 2^-24), as in C."""
    i = np.arange(n, dtype=np.uint64)
    x = (np.uint64(fnv1a(f"{salt}/{key}")) + i * np.uint64(0x9E3779B9)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return (x >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)


def formula_value(salt, key, shape):
    """The float32 value of state entry `key` (float tensors only), as test_resnet.c's."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform01(salt, key, n).astype(np.float64)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        v = 0.2 * (2 * u - 1)
    elif leaf == "running_var":
        v = 0.5 + u
    elif leaf == "weight" and len(shape) == 1:  # batch norm
        v = 0.5 + u
    elif leaf == "bias":
        v = 0.2 * (2 * u - 1)
    elif len(shape) == 4:  # convolution: uniform of kaiming's fan-out variance 2 / fan_out
        v = (2 * u - 1) * math.sqrt(6.0 / (shape[0] * shape[2] * shape[3]))
    else:  # linear
        v = (2 * u - 1) / math.sqrt(shape[1])
    return torch.tensor(v.astype(np.float32).reshape(shape))


def formula_state(model, salt):
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(formula_value(salt, k, tuple(t.shape)))


# ---- golden cases --------------------------------------------------------------------------

out = {}
SUB = 128  # a network case checks every tensor at <= SUB places


def order(name, mod, shapes=False):
    for i, (k, v) in enumerate(mod.state_dict().items()):
        out[f"{name}.order.{k}"] = torch.tensor([i] + (list(v.shape) if shapes else []), dtype=torch.int32)


def sub(name, kind, key, t):
    t = t.detach().flatten()
    stride = max(1, -(-t.numel() // SUB))
    out[f"{name}.sub.{kind}.{key}"] = t[::stride].clone()
    out[f"{name}.stride.{key}"] = torch.tensor(stride, dtype=torch.int32)


def block_case(name, mod, shape, training):
    """As gen_nn.py's run(): full state, output, every gradient, buffers after the forward."""
    with torch.no_grad():
        for bn in (m for m in mod.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(3)
    mod.train(training)
    order(name, mod)
    for k, v in mod.state_dict().items():
        out[f"{name}.state.{k}"] = v.clone()
    x = torch.randn(*shape, requires_grad=True)
    y = mod(x)
    seed = torch.randn_like(y)
    y.backward(seed)
    out[f"{name}.x"], out[f"{name}.seed"], out[f"{name}.y"], out[f"{name}.grad.x"] = x, seed, y, x.grad
    for k, p in mod.named_parameters():
        out[f"{name}.grad.{k}"] = p.grad
    for k, b in mod.named_buffers():
        out[f"{name}.after.{k}"] = b


def formula_input(salt, shape):
    """The input of a network case: U(-1, 1) from the formula (key "input"), not stored."""
    return 2 * torch.tensor(uniform01(salt, "input", int(np.prod(shape))).reshape(shape)) - 1


NET_EPS = 1e-4  # test_resnet.c's bound for the network cases: NET_EPS * (max|ref| + |ref|)


def run_twice(name, make, fn):
    """fn(model, dtype) -> {key: tensor} run in float64 (the reference stored) and float32.
    A case is kept only if torch's own float32 result is within a quarter of the bound of the
    float64 one: a training-mode batch norm over a channel that ReLU almost empties divides
    by a tiny deviation, and such a case is ill-conditioned (float32 rounding, anyone's,
    moves results by more than the bound) and would test nothing."""
    ref = fn(make().double(), torch.float64)
    f32 = fn(make(), torch.float32)
    for k, r in ref.items():
        if not r.is_floating_point():
            continue
        r, g = r.detach().double().flatten(), f32[k].detach().double().flatten()
        e = ((g - r).abs() / (NET_EPS * (r.abs().max() + r.abs()) + 1e-30)).max().item()
        assert e <= 0.25, f"{name}: ill-conditioned, torch float32 {k} off float64 by {e:.3g} of the bound"
    return ref


def net_case(name, make, shape, training):
    """Formula weights and input (salt: the case name); the output in full; the input's and the
    parameters' gradients and the buffers after the forward subsampled."""
    def fn(mod, dtype):
        formula_state(mod, name)
        mod.train(training)
        x = formula_input(name, shape).to(dtype).requires_grad_(True)
        y = mod(x)
        g = torch.Generator().manual_seed(fnv1a(name))
        seed = torch.randn(y.shape, generator=g).to(dtype)
        y.backward(seed)
        r = {"seed": seed, "y": y, "sub.grad.x": x.grad}
        r.update({f"sub.grad.{k}": p.grad for k, p in mod.named_parameters()})
        r.update({f"sub.after.{k}": b for k, b in mod.named_buffers() if b.is_floating_point()})
        return r

    order(name, make(), True)
    for k, v in run_twice(name, make, fn).items():
        if k.startswith("sub."):
            kind, key = k[4:].split(".", 1)
            sub(name, kind, key, v)
        else:
            out[f"{name}.{k}"] = v


def step_case(name, make, x, target):
    """One training step of torch_ref.py's recipe (cross-entropy, SGD 0.1 momentum 0.9 weight
    decay 5e-4) from formula weights (salt: the case name): loss, logits, gradients,
    parameters and running statistics after the step, and the eval-mode logits after it."""
    def fn(mod, dtype):
        formula_state(mod, name)
        mod.train(True)
        opt = torch.optim.SGD(mod.parameters(), 0.1, momentum=0.9, weight_decay=5e-4)
        xx = x.to(dtype).requires_grad_(True)
        y = mod(xx)
        loss = F.cross_entropy(y, target)
        opt.zero_grad()
        loss.backward()
        r = {"y": y, "loss": loss.reshape(1), "grad.x": xx.grad}
        r.update({f"sub.grad.{k}": p.grad.clone() for k, p in mod.named_parameters()})
        opt.step()
        r.update({f"sub.after.{k}": t.clone() for k, t in mod.state_dict().items() if t.is_floating_point()})
        mod.eval()
        with torch.no_grad():
            r["y_eval"] = mod(xx)
        return r

    order(name, make(), True)
    out[f"{name}.x"], out[f"{name}.target"] = x, target
    for k, v in run_twice(name, make, fn).items():
        if k.startswith("sub."):
            kind, key = k[4:].split(".", 1)
            sub(name, kind, key, v)
        else:
            out[f"{name}.{k}"] = v


def golden():
    counts = {"resnet18": resnet18(), "resnet34": resnet34(), "resnet50": resnet50(), "resnet20": ResNet20(1, 10)}
    published = {"resnet18": 11689512, "resnet34": 21797672, "resnet50": 25557032, "resnet20": 272186}
    for k, m in counts.items():
        n = sum(p.numel() for p in m.parameters())
        assert n == published[k], (k, n)
        out[f"counts.{k}"] = torch.tensor(n, dtype=torch.int32)
        order(k, m, True)
    del counts

    # blocks: each from its own seed
    blocks = [
        ("basic_down", lambda: make_block(BasicBlock, 3, 4, 2), (2, 3, 6, 6)),
        ("basic_id", lambda: make_block(BasicBlock, 4, 4, 1), (2, 4, 5, 5)),
        ("bottleneck_down", lambda: make_block(Bottleneck, 4, 2, 2), (2, 4, 6, 6)),
        ("bottleneck_id", lambda: make_block(Bottleneck, 8, 2, 1), (2, 8, 5, 5)),
    ]
    for i, (name, make, shape) in enumerate(blocks):
        for training in (True, False):
            torch.manual_seed(100 + 2 * i + (0 if training else 1))
            block_case(name + ("" if training else "_eval"), make(), shape, training)

    # network cases: weights and inputs from the formula (their names are the salts)
    net_case("r18_small_eval", lambda: resnet18(num_classes=10, small_stem=True), (2, 3, 32, 32), False)
    net_case("r18_imagenet", lambda: resnet18(num_classes=10), (2, 3, 64, 64), True)
    net_case("r18_imagenet_eval", lambda: resnet18(num_classes=10), (1, 3, 32, 32), False)
    torch.manual_seed(203)
    step_case("resnet20_step", lambda: ResNet20(1, 10), torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,)))

    save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet.safetensors"), out,
         {"what": "ResNet blocks and networks: state, outputs, gradients, one SGD step"})


# ---- interop (tests/interop.sh) --------------------------------------------------------------

DTYPES = {"F32": np.float32, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    res = {}
    for k, e in header.items():
        a, b = e["data_offsets"]
        arr = np.frombuffer(data[base + a:base + b], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
        res[k] = torch.from_numpy(arr.copy())
    return res


def write_safetensors(path, tensors):
    names = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}
    header, blobs, off = {}, [], 0
    for k, v in tensors.items():
        v = v.detach().contiguous()
        data = v.numpy().tobytes()
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def export(path):
    torch.manual_seed(7)
    m = resnet18()
    opt = torch.optim.SGD(m.parameters(), 0.01, momentum=0.9)
    opt.zero_grad()
    F.cross_entropy(m(torch.randn(4, 3, 64, 64)), torch.randint(0, 1000, (4,))).backward()
    opt.step()
    m.eval()
    write_safetensors(path, m.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
    write_safetensors(path + ".y.safetensors", {"x": x, "y": y})
    print(f"exported a torch ResNet-18 ({len(m.state_dict())} state entries) to {path}")


def check(path):
    m = resnet18()
    state = read_safetensors(path)
    m.load_state_dict(state, strict=True)  # raises naming missing, unexpected or mismatched keys
    m.eval()
    ref = read_safetensors(path + ".y.safetensors")
    with torch.no_grad():
        y = m(ref["x"])
    # both float32 ResNet-18s, eval mode: rounding only (different summation orders)
    err = ((y - ref["y"]).abs().max() / ref["y"].abs().max()).item()
    print(f"torch loaded kiln's ResNet-18 strictly ({len(state)} tensors); max |torch - kiln| / max |kiln| = {err:.3g}")
    return 0 if err <= 1e-5 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "export":
        export(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2]))
    elif len(sys.argv) == 1:
        golden()
    else:
        sys.exit(__doc__)
