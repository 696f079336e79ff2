"""tests/golden/gen_onnx.py - writes the torch-exported ONNX models test_onnx reads: a small
CNN (Conv, BatchNorm, ReLU, MaxPool, Flatten, Gemm, dropout in eval), an MLP with GELU
(exported as Erf/Div/Mul/Add) and LayerNorm, a small ResNet (residual Add, strided 1x1
shortcut, global average pool), an LSTM/GRU stack and nn.Upsample (Resize), each with a dynamic batch dimension, plus an
input batch and torch's outputs as ONNX TensorProto files (onnx_<name>_in.pb / _out.pb).

    /usr/bin/python3 tests/golden/gen_onnx.py
"""
import os

import numpy
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


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.skip = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.skip(x))


class ResNet(torch.nn.Module):
    """A torchvision-style residual network in miniature (stem, two stages, global pool)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(4),
                                        torch.nn.ReLU())
        self.layers = torch.nn.Sequential(Block(4, 4, 1), Block(4, 8, 2))
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class RNN(torch.nn.Module):
    """A bidirectional LSTM into a GRU (torch exports the GRU with linear_before_reset=1)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, bidirectional=True)
        self.gru = torch.nn.GRU(8, 5)

    def forward(self, x):
        y, _ = self.lstm(x)
        z, h = self.gru(y)
        return z + h


class Upsample(torch.nn.Module):
    """nn.Upsample nearest and bilinear (exported as Resize), between two convolutions."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.up1 = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.up2 = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up3 = torch.nn.Upsample(size=(13, 11), mode="bilinear", align_corners=True)
        self.c2 = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.c2(self.up3(self.up2(self.up1(torch.relu(self.c1(x))))))


def export(name, model, x, batch_dim=0):
    model.eval()
    with torch.no_grad():
        # non-trivial running statistics for the batch norm
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        y = model(x)
    torch.onnx.export(model, (x,), os.path.join(here, f"onnx_{name}.onnx"), opset_version=13,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {batch_dim: "batch"}, "y": {batch_dim: "batch"}})
    for suffix, t in (("in", x), ("out", y)):
        with open(os.path.join(here, f"onnx_{name}_{suffix}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(t.numpy()).SerializeToString())
        if name == "mlp":  # for `kiln onnx run` (tests/onnx_run.sh)
            numpy.save(os.path.join(here, f"onnx_{name}_{suffix}.npy"), t.numpy())


export("cnn", CNN(), torch.randn(3, 1, 8, 8))
export("mlp", MLP(), torch.randn(5, 6))
export("resnet", ResNet(), torch.randn(2, 1, 8, 8))
export("rnn", RNN(), torch.randn(6, 2, 3), batch_dim=1)
export("upsample", Upsample(), torch.randn(2, 2, 3, 4))
