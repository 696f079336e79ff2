"""PyTorch reference for tests/test_checkpoint.c: a torch model's state_dict saved as
safetensors exactly as PyTorch users write it (F32 weights, I64 num_batches_tracked), plus an
input and the model's eval-mode output, so the test checks that kiln loads a PyTorch state
dict by name and computes the same function.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_checkpoint.py
"""
import json
import os
import struct

import torch
import torch.nn as nn

from golden_io import save

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(5)
net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
# a few training steps so the running statistics and num_batches_tracked are not defaults
opt = torch.optim.SGD(net.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    net(torch.randn(8, 1, 6, 6)).sum().backward()
    opt.step()
net.eval()

# the state dict in safetensors with torch's own dtypes (the format safetensors.torch writes)
header, blobs, off = {}, [], 0
for k, v in net.state_dict().items():
    v = v.contiguous()
    dt = {torch.float32: "F32", torch.int64: "I64"}[v.dtype]
    data = v.numpy().tobytes()
    header[k] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [off, off + len(data)]}
    blobs.append(data)
    off += len(data)
header["__metadata__"] = {"format": "pt"}
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(here, "torch_state.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

x = torch.randn(2, 1, 6, 6)
with torch.no_grad():
    y = net(x)
save(os.path.join(here, "checkpoint.safetensors"), {"x": x, "y": y}, {"what": "input/output of torch_state"})
