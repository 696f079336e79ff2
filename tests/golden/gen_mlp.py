"""PyTorch reference for tests/test_mlp.c: a 2-layer MLP trained 100 steps on one fixed
batch, with SGD (momentum) and with Adam, from the same initial weights.

Writes tests/golden/mlp.safetensors: the batch (x, y), the initial parameters under
their state_dict names, the loss of every step and the final parameters per optimizer.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_mlp.py
"""
import os

import torch

from golden_io import save

torch.manual_seed(1234)
N, D, H, C = 32, 20, 32, 5
x = torch.randn(N, D)
y = torch.randint(0, C, (N,))


def model():
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))


out = {"x": x, "y": y}
init = model()
for k, v in init.state_dict().items():
    out["init." + k] = v

configs = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}
for name, make in configs.items():
    net = model()
    opt = make(net.parameters())
    losses = []
    for step in range(100):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out[name + ".losses"] = torch.tensor(losses, dtype=torch.float64)
    for k, v in net.state_dict().items():
        out[name + ".final." + k] = v

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlp.safetensors"), out,
     {"what": "2-layer MLP, 100 steps on a fixed batch"})
