"""PyTorch reference for tests/test_nn.c: every kiln module against its torch.nn twin.

For each case: the module's state_dict (kiln loads it by the same names, which checks that
kiln's names are PyTorch's), an input, a seed gradient, the output, the input's gradient
and every parameter's gradient after output.backward(seed), and for batch norm the running
statistics after the forward. Both training and eval mode where they differ.

"basic_block" (and "basic_block_identity_eval") is torchvision's ResNet BasicBlock (conv3x3-bn-relu-conv3x3-bn, plus a
1x1-conv/bn downsample of the identity or the identity itself, relu) written here with plain torch.nn, so that
torchvision is not needed: tests/test_nn.c builds the same block as a user-defined kiln
module and loads this state_dict into it by name, strictly.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_nn.py
"""
import os

import torch
import torch.nn as nn

from golden_io import save


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, with its attribute (state_dict) names."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


torch.manual_seed(42)
cases = {
    "linear": (nn.Linear(7, 5), (3, 7), True),
    "linear_nobias_3d": (nn.Linear(6, 4, bias=False), (2, 3, 6), True),
    "conv2d": (nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6), True),
    "conv2d_groups": (nn.Conv2d(4, 6, (3, 2), dilation=(2, 1), groups=2), (1, 4, 8, 5), True),
    "conv_transpose2d": (nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5), True),
    "batchnorm1d": (nn.BatchNorm1d(5), (6, 5), True),
    "batchnorm1d_eval": (nn.BatchNorm1d(5), (6, 5), False),
    "batchnorm2d": (nn.BatchNorm2d(3), (2, 3, 4, 5), True),
    "batchnorm2d_eval": (nn.BatchNorm2d(3), (2, 3, 4, 5), False),
    "layernorm": (nn.LayerNorm((4, 5)), (3, 4, 5), True),
    "maxpool2d": (nn.MaxPool2d(2), (2, 3, 6, 7), True),
    "avgpool2d": (nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 7, 5), True),
    "global_avgpool2d": (nn.AdaptiveAvgPool2d(1), (2, 3, 5, 4), True),
    "flatten": (nn.Flatten(), (2, 3, 4, 5), True),
    "gelu": (nn.GELU(), (4, 6), True),
    "leaky_relu": (nn.LeakyReLU(0.2), (4, 6), True),
    "softmax": (nn.Softmax(dim=1), (3, 7), True),
}
out = {}


def run(name, mod, shape, training):
    if isinstance(mod, BasicBlock):
        # every batch norm with non-trivial affine parameters and running statistics
        with torch.no_grad():
            for bn in (m for m in mod.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.num_batches_tracked.fill_(3)
    elif name.endswith("_eval"):
        # non-trivial running statistics to evaluate with
        with torch.no_grad():
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.uniform_(-0.5, 0.5)
    elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
        with torch.no_grad():
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.uniform_(-0.5, 0.5)
    mod.train(training)
    for k, v in mod.state_dict().items():
        out[f"{name}.state.{k}"] = v.clone()  # state_dict aliases the live buffers: keep the values before the forward
    x = torch.randn(*shape, requires_grad=True)
    y = mod(x)
    seed = torch.randn_like(y)
    y.backward(seed)
    out[f"{name}.x"] = x
    out[f"{name}.seed"] = seed
    out[f"{name}.y"] = y
    out[f"{name}.grad.x"] = x.grad
    for k, p in mod.named_parameters():
        out[f"{name}.grad.{k}"] = p.grad
    for k, b in mod.named_buffers():
        out[f"{name}.after.{k}"] = b


for name, (mod, shape, training) in cases.items():
    run(name, mod, shape, training)
# after the others, from its own seed, so that their random draws (and values) stay as they were
torch.manual_seed(1013)
run("basic_block", BasicBlock(3, 4, stride=2), (2, 3, 6, 6), True)
torch.manual_seed(1014)  # the identity shortcut (no downsample), in eval mode
run("basic_block_identity_eval", BasicBlock(4, 4), (2, 4, 5, 5), False)

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nn.safetensors"), out,
     {"what": "torch.nn modules: state, outputs and gradients"})
