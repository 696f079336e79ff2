"""PyTorch reference for tests/test_nn.c: every kiln module against its torch.nn twin.

For each case: the module's state_dict (kiln loads it by the same names, which checks that
kiln's names are PyTorch's), an input, a seed gradient, the output, the input's gradient
and every parameter's gradient after output.backward(seed), and for batch norm the running
statistics after the forward. Both training and eval mode where they differ.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_nn.py
"""
import os

import torch
import torch.nn as nn

from golden_io import save

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
for name, (mod, shape, training) in cases.items():
    if name.endswith("_eval"):
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

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nn.safetensors"), out,
     {"what": "torch.nn modules: state, outputs and gradients"})
