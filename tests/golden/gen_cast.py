"""PyTorch references for kiln_to_dtype (tests/test_half.c reads cast.safetensors).

to_dtype.x holds f32 values chosen for the conversions' edge cases (infinities, NaN, f16's
largest value and the ties around it, f16 denormals and the values that round to 0 or to
the smallest denormal, ties to even in both f16 and bf16, bf16 overflow) and random
normals at several scales; to_dtype.f16 and to_dtype.bf16 hold torch's x.to(float16) and
x.to(bfloat16), widened back to f32 (exact), so a test compares kiln's conversion bit for bit.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_cast.py
"""
import os
import struct

import torch

from golden_io import save

torch.manual_seed(20261205)


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


special = [0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), float("nan"),
           65504.0, 65519.99, 65520.0, 65536.0, -70000.0, 1e-8, 2.0 ** -24, 2.0 ** -25, f32(0x33000001),
           2.0 ** -24 * 1.5, 2.0 ** -24 * 2.5, 2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -11), 6.1e-5,
           1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, f32(0x3F808000),
           f32(0x3F818000), 3.4028234e38, f32(0x7F7F8000), 1e-40, -1e-45, 0.1, 1.0 / 3.0]
x = torch.cat([torch.tensor(special, dtype=torch.float32), torch.randn(64) * 1000, torch.randn(64) * 1e-3,
               torch.randn(64) * 1e-6])
T = {"to_dtype.x": x, "to_dtype.f16": x.to(torch.float16).to(torch.float32),
     "to_dtype.bf16": x.to(torch.bfloat16).to(torch.float32)}
save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cast.safetensors"), T)
