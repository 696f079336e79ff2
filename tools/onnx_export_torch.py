#!/usr/bin/python3
"""Exports torch_ref.py's CNN or ResNet-20 as ONNX with torch.onnx.export, with kiln-trained
weights or a random initialisation: the PyTorch-made ONNX models kiln's runtime is to run
(examples/onnx_classify, `kiln bench onnx`).

    /usr/bin/python3 tools/onnx_export_torch.py --model cnn --weights cnn.safetensors cnn.onnx
    /usr/bin/python3 tools/onnx_export_torch.py --model resnet20 --weights resnet20.safetensors \\
        resnet20.onnx [--accuracy]
    /usr/bin/python3 tools/onnx_export_torch.py --model cnn --random --seed 3 cnn_random.onnx

--weights: a safetensors file saved by examples/cnn_fashion or examples/resnet_fashion
(`--save PATH`); the state-dict names are torch_ref.py's (the examples name their layers so),
loaded strictly: a missing or misshapen tensor is an error. kiln stores BatchNorm's
num_batches_tracked as I32; torch's load_state_dict converts it. --random: torch's own
initialisation after torch.manual_seed(--seed), for tests.

The graph (opset 17, the model in eval mode) has one input "input" [batch, 1, 28, 28] and one
output "output" [batch, 10] of logits, with a dynamic batch axis. Its input is x/255 (pixels
scaled to [0, 1]) for both models: the ResNet's normalisation of examples/resnet_fashion,
(x - 0.2860) / 0.3530, is exported in front of it (Sub, Div) unless --no-normalize, so
examples/onnx_classify feeds both models the same way. --accuracy also prints the torch
model's Fashion-MNIST test accuracy ("torch_test_accuracy="), the figure onnx_classify's
must equal. The model classes come from torch_ref.py (--torch-ref, default $KILN_TORCH_REF
or ../shared/bench/torch_ref.py beside the repository).
"""
import argparse
import importlib.util
import os
import sys

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kiln_torch  # noqa: E402  (safetensors reading and Fashion-MNIST, without extra modules)

MEAN, STD = 0.2860, 0.3530  # examples/resnet_fashion's input normalisation


def find_torch_ref():
    if os.environ.get("KILN_TORCH_REF"):
        return os.environ["KILN_TORCH_REF"]
    for p in (os.path.join(HERE, "..", "..", "shared", "bench", "torch_ref.py"),
              os.path.join(HERE, "..", "..", "..", "shared", "bench", "torch_ref.py")):
        if os.path.exists(p):
            return os.path.normpath(p)
    return None


def load_torch_ref(path):
    if not path or not os.path.exists(path):
        sys.exit(f"onnx_export_torch: torch_ref.py not found ({path}); pass --torch-ref PATH")
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Normalized(nn.Module):
    """(x - mean) / std in front of a model; its state-dict keys stay the model's (model.*)."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def build(ref, a):
    """The eval-mode torch model of --model with --weights or a random init."""
    torch.manual_seed(a.seed)
    model = ref.CNN() if a.model == "cnn" else ref.ResNet20(in_ch=1, classes=10)
    if a.weights:
        state, meta = kiln_torch.load_safetensors(a.weights)
        want = model.state_dict()
        missing = sorted(set(want) - set(state))
        extra = sorted(set(state) - set(want))
        if missing:
            sys.exit(f"onnx_export_torch: {a.weights} does not hold torch_ref.py's {a.model}: missing "
                     f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:  # e.g. a training checkpoint's optimizer state
            print(f"ignored {len(extra)} tensors of {a.weights} that the model has not: {', '.join(extra[:4])}"
                  f"{' ...' if len(extra) > 4 else ''}")
            state = {k: v for k, v in state.items() if k in want}
        for k, v in state.items():
            if tuple(v.shape) != tuple(want[k].shape):
                sys.exit(f"onnx_export_torch: {a.weights}: {k} is {list(v.shape)}, the model's is {list(want[k].shape)}")
        model.load_state_dict(state, strict=True)
        print(f"loaded {len(state)} tensors from {a.weights}" +
              (f" ({meta['description']})" if "description" in meta else ""))
    if a.model == "resnet20" and not a.no_normalize:
        model = Normalized(model, MEAN, STD)
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="the .onnx file to write")
    ap.add_argument("--model", choices=["cnn", "resnet20"], required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="kiln safetensors (cnn_fashion / resnet_fashion --save)")
    src.add_argument("--random", action="store_true", help="torch's initialisation, seeded (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-normalize", action="store_true",
                    help="resnet20: leave (x - 0.2860) / 0.3530 out of the graph (its input is then normalised)")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--accuracy", action="store_true", help="print the torch model's test accuracy too")
    ap.add_argument("--data", default=kiln_torch.DATA)
    ap.add_argument("--torch-ref", default=find_torch_ref())
    a = ap.parse_args()
    model = build(load_torch_ref(a.torch_ref), a)
    x = torch.rand(2, 1, 28, 28)
    tmp = a.output + ".tmp"
    with torch.no_grad():
        torch.onnx.export(model, x, tmp, opset_version=a.opset, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, do_constant_folding=True)
    try:  # the checker when python3-onnx is there (Debian's torch does not need it to export)
        import onnx
        m = onnx.load(tmp)
        onnx.checker.check_model(m, full_check=True)
        ops = sorted({n.op_type for n in m.graph.node})
        print(f"onnx.checker (full_check) passed: {len(m.graph.node)} nodes ({', '.join(ops)}), "
              f"{len(m.graph.initializer)} initializers")
    except ImportError:
        pass
    os.replace(tmp, a.output)
    print(f"wrote {a.output} (opset {a.opset}, input [batch, 1, 28, 28] = x/255"
          f"{', normalised inside' if a.model == 'resnet20' and not a.no_normalize else ''})")
    if a.accuracy:
        tx, ty = kiln_torch.fashion(a.data, False)
        if a.model == "resnet20" and a.no_normalize:
            tx = (tx - MEAN) / STD
        print(f"torch_test_accuracy={kiln_torch.accuracy(model, tx, ty, 500):.4f}")


if __name__ == "__main__":
    main()
