#!/usr/bin/python3
"""tests/onnx_check.py - checks the ONNX files kiln_onnx_save wrote (tests/test_onnx_export.c).

    /usr/bin/python3 tests/onnx_check.py DIR [NAME ...]

For each model NAME listed in DIR/manifest.txt (or given): DIR/NAME.onnx must pass
onnx.checker.check_model(full_check=True) and onnx.shape_inference.infer_shapes(strict_mode=
True); use opset 17; have a symbolic "batch" input dimension; have exactly the
initializers of DIR/NAME_keys.txt (the module's state_dict keys); and, evaluated here in
NumPy (float64) on DIR/NAME_input.npy (input k > 0 of several in DIR/NAME_input_<k>.npy), give DIR/NAME_output.npy (kiln's output; output k > 0
in DIR/NAME_output_<k>.npy) within a normalised error of 1 at atol = rtol = 1e-4; for the
attention, decoder and positional-encoding cases, PyTorch's own module of the same
configuration with the file's initializers as its state_dict must give kiln's output too. ONNX 1.12 has no reference evaluator, so the
operators kiln exports are written out below from the ONNX operator specification.

Prints one line per model and exits 0 when every check passed, 1 otherwise, 77 (meson's skip)
when the onnx module is missing.
"""
import math
import os
import sys

import numpy as np

try:
    import onnx
    from onnx import numpy_helper
except ImportError:
    print("onnx_check: no onnx module (Debian: python3-onnx); skipped")
    sys.exit(77)

ATOL = RTOL = 1e-4


def attrs(node):
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def windows(xp, k, s, d, out):
    """[N, C, kh, kw, Ho, Wo] views of a padded NCHW array."""
    rows = []
    for i in range(k[0]):
        cols = []
        for j in range(k[1]):
            h0, w0 = i * d[0], j * d[1]
            cols.append(xp[:, :, h0:h0 + s[0] * (out[0] - 1) + 1:s[0], w0:w0 + s[1] * (out[1] - 1) + 1:s[1]])
        rows.append(np.stack(cols, 2))
    return np.stack(rows, 2)


def out_size(n, k, s, d, p0, p1, ceil):
    span = n + p0 + p1 - d * (k - 1) - 1
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + p0:  # the last window must start inside the input or the left padding
        o -= 1
    return o


def pad_for(x, pads, k, s, d, out, value):
    """x padded by pads [t, l, b, r] and at the end as far as the last window reaches."""
    H, W = x.shape[2:]
    need_h = (out[0] - 1) * s[0] + d[0] * (k[0] - 1) + 1
    need_w = (out[1] - 1) * s[1] + d[1] * (k[1] - 1) + 1
    eb = max(pads[2], need_h - H - pads[0])
    er = max(pads[3], need_w - W - pads[1])
    return np.pad(x, ((0, 0), (0, 0), (pads[0], eb), (pads[1], er)), constant_values=value)


def conv(x, w, b, a):
    k = list(a.get("kernel_shape", w.shape[2:]))
    s, d = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads, g = list(a.get("pads", [0, 0, 0, 0])), a.get("group", 1)
    N, C, H, W = x.shape
    out = [out_size(H, k[0], s[0], d[0], pads[0], pads[2], False), out_size(W, k[1], s[1], d[1], pads[1], pads[3], False)]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = windows(xp, k, s, d, out)  # [N, C, kh, kw, Ho, Wo]
    M, cg, mg = w.shape[0], C // g, w.shape[0] // g
    y = np.concatenate([np.einsum("ncklhw,mckl->nmhw", win[:, i * cg:(i + 1) * cg], w[i * mg:(i + 1) * mg])
                        for i in range(g)], 1)
    return y if b is None else y + b.reshape(1, M, 1, 1)


def conv_transpose(x, w, b, a):
    k = list(a.get("kernel_shape", w.shape[2:]))
    s, d = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads, g = list(a.get("pads", [0, 0, 0, 0])), a.get("group", 1)
    op = list(a.get("output_padding", [0, 0]))
    N, C, H, W = x.shape
    cg, mg = C // g, w.shape[1]
    full = np.zeros((N, mg * g, (H - 1) * s[0] + d[0] * (k[0] - 1) + 1 + op[0],
                     (W - 1) * s[1] + d[1] * (k[1] - 1) + 1 + op[1]))
    for gi in range(g):
        xg, wg = x[:, gi * cg:(gi + 1) * cg], w[gi * cg:(gi + 1) * cg]
        for i in range(k[0]):
            for j in range(k[1]):
                full[:, gi * mg:(gi + 1) * mg, i * d[0]:i * d[0] + s[0] * (H - 1) + 1:s[0],
                     j * d[1]:j * d[1] + s[1] * (W - 1) + 1:s[1]] += np.einsum("nchw,cm->nmhw", xg, wg[:, :, i, j])
    Ho = full.shape[2] - pads[0] - pads[2]
    Wo = full.shape[3] - pads[1] - pads[3]
    y = full[:, :, pads[0]:pads[0] + Ho, pads[1]:pads[1] + Wo]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def pool(x, a, kind):
    k = list(a["kernel_shape"])
    s, d = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads, ceil = list(a.get("pads", [0, 0, 0, 0])), bool(a.get("ceil_mode", 0))
    H, W = x.shape[2:]
    out = [out_size(H, k[0], s[0], d[0], pads[0], pads[2], ceil), out_size(W, k[1], s[1], d[1], pads[1], pads[3], ceil)]
    if kind == "max":
        return windows(pad_for(x, pads, k, s, d, out, -np.inf), k, s, d, out).max(axis=(2, 3))
    total = windows(pad_for(x, pads, k, s, d, out, 0.0), k, s, d, out).sum(axis=(2, 3))
    ones = np.ones((1, 1, H, W))
    if a.get("count_include_pad", 0):  # the explicit padding counts, the ceil_mode overhang does not
        ones = np.pad(ones, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=1.0)
        ones = np.pad(ones, ((0, 0), (0, 0), (0, max(0, (out[0] - 1) * s[0] + k[0] - ones.shape[2])),
                             (0, max(0, (out[1] - 1) * s[1] + k[1] - ones.shape[3]))))
        count = windows(ones, k, s, d, out).sum(axis=(2, 3))
    else:
        count = windows(pad_for(ones, pads, k, s, d, out, 0.0), k, s, d, out).sum(axis=(2, 3))
    return total / count


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def recurrent(op, i, a, nout):
    """ONNX's RNN, GRU and LSTM (layout 0, no sequence_lens, no peepholes)."""
    x, W, R = i[0], i[1], i[2]
    B = i[3] if len(i) > 3 and i[3] is not None else None
    H, T, N = a["hidden_size"], x.shape[0], x.shape[1]
    D = W.shape[0]
    gates = W.shape[1] // H
    acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])] or ["Tanh"] * D
    Y, Yh, Yc = np.zeros((T, D, N, H)), np.zeros((D, N, H)), np.zeros((D, N, H))
    for d in range(D):
        wb = B[d, :gates * H] if B is not None else np.zeros(gates * H)
        rb = B[d, gates * H:] if B is not None else np.zeros(gates * H)
        h0, c0 = (i[k] if len(i) > k and i[k] is not None else None for k in (5, 6))
        h = h0[d].copy() if h0 is not None else np.zeros((N, H))
        c = c0[d].copy() if c0 is not None else np.zeros((N, H))
        for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
            xw, hr = x[t] @ W[d].T + wb, h @ R[d].T + rb
            if op == "RNN":
                pre = xw + hr
                h = np.maximum(pre, 0) if acts[d] == "Relu" else np.tanh(pre)
            elif op == "GRU":  # z, r, h; linear_before_reset
                z = sigmoid(xw[:, :H] + hr[:, :H])
                r = sigmoid(xw[:, H:2 * H] + hr[:, H:2 * H])
                if a.get("linear_before_reset", 0):
                    hh = np.tanh(xw[:, 2 * H:] + r * hr[:, 2 * H:])
                else:
                    hh = np.tanh(xw[:, 2 * H:] + (r * h) @ R[d][2 * H:].T + rb[2 * H:])
                h = (1 - z) * hh + z * h
            else:  # LSTM: i, o, f, c
                g = xw + hr
                ig, og, fg, cg = sigmoid(g[:, :H]), sigmoid(g[:, H:2 * H]), sigmoid(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
                c = fg * c + ig * cg
                h = og * np.tanh(c)
            Y[t, d] = h
        Yh[d], Yc[d] = h, c
    return (Y, Yh, Yc)[:nout]


def run_node(n, v):
    a, i = attrs(n), [v[name] if name else None for name in n.input]
    op = n.op_type
    if op == "Constant":
        return np.asarray(a["value"], dtype=np.float64 if a["value"].dtype.kind == "f" else a["value"].dtype)
    if op == "Identity":
        return i[0]
    if op == "Gemm":
        A = i[0].T if a.get("transA", 0) else i[0]
        B = i[1].T if a.get("transB", 0) else i[1]
        y = a.get("alpha", 1.0) * A @ B
        return y + a.get("beta", 1.0) * i[2] if len(i) > 2 and i[2] is not None else y
    if op == "MatMul":
        return i[0] @ i[1]
    if op == "Transpose":
        return np.transpose(i[0], a.get("perm"))
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}[op](i[0], i[1])
    if op == "Relu":
        return np.maximum(i[0], 0)
    if op == "LeakyRelu":
        return np.where(i[0] >= 0, i[0], a.get("alpha", 0.01) * i[0])
    if op == "Elu":
        return np.where(i[0] > 0, i[0], a.get("alpha", 1.0) * np.expm1(np.minimum(i[0], 0)))
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-i[0]))
    if op == "Tanh":
        return np.tanh(i[0])
    if op == "Softplus":
        return np.logaddexp(0, i[0])
    if op == "Erf":
        return np.vectorize(math.erf)(i[0])
    if op == "Softmax":
        return softmax(i[0], a.get("axis", -1))
    if op == "LogSoftmax":
        return np.log(softmax(i[0], a.get("axis", -1)))
    if op == "Conv":
        return conv(i[0], i[1], i[2] if len(i) > 2 else None, a)
    if op == "ConvTranspose":
        return conv_transpose(i[0], i[1], i[2] if len(i) > 2 else None, a)
    if op == "BatchNormalization":
        x, scale, b, mean, var = i
        sh = (1, -1) + (1,) * (x.ndim - 2)
        return (x - mean.reshape(sh)) / np.sqrt(var.reshape(sh) + a.get("epsilon", 1e-5)) * scale.reshape(sh) + b.reshape(sh)
    if op == "LayerNormalization":
        x, axis = i[0], a.get("axis", -1)
        axes = tuple(range(axis % x.ndim, x.ndim))
        m, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        y = (x - m) / np.sqrt(var + a.get("epsilon", 1e-5)) * i[1]
        return y + i[2] if len(i) > 2 else y
    if op == "MaxPool":
        return pool(i[0], a, "max")
    if op == "AveragePool":
        return pool(i[0], a, "avg")
    if op == "GlobalAveragePool":
        return i[0].mean(axis=tuple(range(2, i[0].ndim)), keepdims=True)
    if op == "Flatten":
        ax = a.get("axis", 1) % max(i[0].ndim, 1)
        return i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)
    if op == "Reshape":
        shape = [i[0].shape[k] if s == 0 and not a.get("allowzero", 0) else int(s) for k, s in enumerate(i[1])]
        return i[0].reshape(shape)
    if op in ("RNN", "GRU", "LSTM"):
        return recurrent(op, i, a, len(n.output))
    if op == "Split":
        return tuple(np.split(i[0], len(n.output), axis=a.get("axis", 0)))
    if op == "Concat":
        return np.concatenate(i, axis=a["axis"])
    if op == "Slice":  # (only for checking the evaluator on torch's exports)
        x = i[0]
        axes = list(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(i[1])))
        steps = list(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(axes)
        sl = [slice(None)] * x.ndim
        for st, en, ax, sp in zip(i[1], i[2], axes, steps):
            sl[int(ax)] = slice(int(st), int(min(en, np.iinfo(np.int64).max)), int(sp))
        return x[tuple(sl)]
    if op == "Shape":
        sh = np.array(i[0].shape, dtype=np.int64)
        return sh[a.get("start", 0):a.get("end", len(sh))]
    if op == "Squeeze":
        return np.squeeze(i[0], axis=tuple(int(k) for k in i[1])) if len(i) > 1 else np.squeeze(i[0])
    if op == "Unsqueeze":
        return np.expand_dims(i[0], tuple(int(k) for k in i[1]))
    if op == "Gather":
        return np.take(i[0], i[1].astype(np.int64), axis=a.get("axis", 0))
    raise NotImplementedError(f"onnx_check: no NumPy evaluation of {op} (node {n.name})")


def evaluate(model, xs):
    g = model.graph
    v = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    v = {k: (a.astype(np.float64) if a.dtype.kind == "f" else a) for k, a in v.items()}
    for inp, x in zip(g.input, xs):
        v[inp.name] = x.astype(np.float64) if x.dtype.kind == "f" else x
    for n in g.node:
        r = run_node(n, v)
        for name, value in zip(n.output, r if isinstance(r, tuple) else (r,)):
            v[name] = value
    return [v[o.name] for o in g.output]


def torch_reference(d, name, model):
    """PyTorch's own module of the same configuration (tests/test_onnx_export.c builds these)
    with the export's initializers as its state_dict, on the same inputs; None where there is
    no such case or no torch."""
    try:
        import torch
    except ImportError:
        return None
    nn, F = torch.nn, torch.nn.functional
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    xs = [torch.from_numpy(np.load(os.path.join(d, name + ("_input.npy" if k == 0 else f"_input_{k}.npy"))))
          for k in range(len(model.graph.input))]
    builders = {
        "mha": lambda: nn.MultiheadAttention(8, 2),
        "mha_kv": lambda: nn.MultiheadAttention(6, 3, batch_first=True, kdim=5, vdim=3),
        "decoder": lambda: nn.TransformerDecoder(
            nn.TransformerDecoderLayer(8, 2, dim_feedforward=12, dropout=0.0, activation="gelu", batch_first=True),
            2, norm=nn.LayerNorm(8)),
        "decoder_layer": lambda: nn.TransformerDecoderLayer(6, 2, dim_feedforward=10, dropout=0.0, norm_first=True),
    }
    with torch.no_grad():
        if name in builders:
            m = builders[name]()
            m.load_state_dict(w, strict=True)
            m.eval()
            y = m(*xs, need_weights=False)[0] if name.startswith("mha") else m(*xs)
        elif name == "pos_learned":  # Embedding -> + weight[:T] (batch-first) -> Linear
            h = F.embedding(xs[0].long(), w["0.weight"]) + w["1.weight"][: xs[0].shape[1]]
            y = F.linear(h, w["2.weight"], w["2.bias"])
        elif name == "pos_sinusoidal":  # the table of the PyTorch tutorial, time-major
            T, D = w["pe"].shape
            pos = torch.arange(T, dtype=torch.float64).unsqueeze(1)
            div = torch.exp(torch.arange(0, D, 2, dtype=torch.float64) * (-math.log(10000.0) / D))
            pe = torch.zeros(T, D, dtype=torch.float64)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
            y = xs[0].double() + pe[: xs[0].shape[0]].unsqueeze(1)
        else:
            return None
    return y.double().numpy()


def check(d, name):
    fails = []
    path = os.path.join(d, name + ".onnx")
    model = onnx.load(path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx.checker.ValidationError and shape inference errors
        fails.append(f"check_model: {e}")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        fails.append(f"infer_shapes: {e}")
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != 17:
        fails.append(f"opset_import {opsets}, expected 17")
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    if "batch" not in dims:
        fails.append(f"input dims {dims}: none is the symbolic 'batch'")
    with open(os.path.join(d, name + "_keys.txt")) as f:
        keys = set(f.read().split())
    inits = {t.name for t in model.graph.initializer}
    if inits != keys:
        fails.append(f"initializers differ from the state_dict keys: missing {sorted(keys - inits)}, "
                     f"extra {sorted(inits - keys)}")
    xs = [np.load(os.path.join(d, name + ("_input.npy" if k == 0 else f"_input_{k}.npy")))
          for k in range(len(model.graph.input))]
    x = xs[0]
    outs = evaluate(model, xs)
    err = 0.0
    for k, got in enumerate(outs):
        want = np.load(os.path.join(d, name + ("_output.npy" if k == 0 else f"_output_{k}.npy"))).astype(np.float64)
        what = model.graph.output[k].name
        if got.shape != want.shape:
            fails.append(f"{what}: shape {got.shape}, kiln's {want.shape}")
            err = math.inf
            continue
        e = float(np.max(np.abs(got - want) / (ATOL + RTOL * np.abs(want))))
        err = max(err, e)
        if not e <= 1:
            fails.append(f"{what} differs from kiln's: max normalised error {e:.3g} "
                         f"(max abs diff {np.max(np.abs(got - want)):.3g})")
    ref = torch_reference(d, name, model)
    terr = None
    if ref is not None:
        want = np.load(os.path.join(d, name + "_output.npy")).astype(np.float64)
        terr = float(np.max(np.abs(ref - want) / (ATOL + RTOL * np.abs(want)))) if ref.shape == want.shape else math.inf
        if not terr <= 1:
            fails.append(f"PyTorch's module with the same weights differs from kiln's: max normalised error {terr:.3g}")
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    hist = " ".join(f"{k}:{ops[k]}" for k in sorted(ops))
    status = "ok" if not fails else "FAILED"
    print(f"{name}: {status}: check_model(full_check) and strict shape inference passed, {len(model.graph.node)} "
          f"nodes, {len(inits)} initializers, input{'s' if len(xs) > 1 else ''} "
          f"{', '.join(str(list(v.shape)) for v in xs)}, max normalised error vs kiln {err:.3g}"
          f"{'' if terr is None else f', torch vs kiln {terr:.3g}'} "
          f"[{hist}]" if not fails else f"{name}: {status}")
    for f in fails:
        print(f"  {f}")
    return not fails


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    names = sys.argv[2:]
    if not names:
        with open(os.path.join(d, "manifest.txt")) as f:
            names = f.read().split()
    print(f"onnx {onnx.__version__}, numpy {np.__version__}")
    ok = all([check(d, n) for n in names])
    sys.exit(0 if ok and names else 1)


if __name__ == "__main__":
    main()
