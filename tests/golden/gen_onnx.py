"""tests/golden/gen_onnx.py - writes the torch-exported ONNX models test_onnx reads: a small
CNN (Conv, BatchNorm, ReLU, MaxPool, Flatten, Gemm, dropout in eval) and an MLP with GELU
(exported as Erf/Div/Mul/Add) and LayerNorm, each with a dynamic batch dimension, plus an
input batch and torch's outputs as ONNX TensorProto files (onnx_<name>_in.pb / _out.pb).

    /usr/bin/python3 tests/golden/gen_onnx.py
"""
import os

import torch
from onnx import numpy_helper

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.MaxPool2d(2)
        self.drop = torch.nn.Dropout(0.3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.drop(torch.flatten(x, 1)))


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return torch.log_softmax(self.fc2(torch.nn.functional.gelu(self.ln(self.fc1(x)))), dim=-1)


def export(name, model, x):
    model.eval()
    with torch.no_grad():
        # non-trivial running statistics for the batch norm
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        y = model(x)
    torch.onnx.export(model, (x,), os.path.join(here, f"onnx_{name}.onnx"), opset_version=13,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    for suffix, t in (("in", x), ("out", y)):
        with open(os.path.join(here, f"onnx_{name}_{suffix}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(t.numpy()).SerializeToString())


export("cnn", CNN(), torch.randn(3, 1, 8, 8))
export("mlp", MLP(), torch.randn(5, 6))
