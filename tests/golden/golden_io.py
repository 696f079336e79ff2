"""Writes PyTorch reference tensors for kiln's tests as safetensors files.

Only the standard library and torch are used (no `safetensors` package): the format is an
8-byte little-endian header length, a JSON header mapping each name to its dtype, shape and
byte range, then the raw little-endian data. kiln's tests read it with tests/golden.h.
Float tensors are stored as F32, integer tensors as I32 (kiln's index dtype).
Run the generators with Debian's interpreter: /usr/bin/python3 tests/golden/gen_<family>.py
"""
import json
import struct

import torch


def save(path, tensors, metadata=None):
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not torch.is_tensor(t):
            t = torch.tensor(t)
        t = t.detach().cpu().contiguous()
        if t.is_floating_point():
            t, dtype = t.to(torch.float32), "F32"
        else:
            t, dtype = t.to(torch.int32), "I32"
        data = t.numpy().tobytes()  # little-endian on every machine torch runs here
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"generator": "kiln tests/golden", "torch": torch.__version__, **(metadata or {})}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
