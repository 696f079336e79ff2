"""PyTorch reference for tests/test_rnn.c: torch.nn.RNN (tanh, relu), LSTM and GRU.

Each case "<mode><N>." (mode lstm, gru, rnn_tanh, rnn_relu) holds:
  p     I32 [num_layers, bidirectional, batch_first, has_h0, has_lengths, bias, input_size, hidden_size]
  w.<name>  the module's state_dict (torch's names: weight_ih_l0, bias_hh_l1_reverse, ...)
  x     the input; h0 (and c0) when has_h0; len (I32 [B]) when has_lengths
  out, hn (, cn)   the results; with lengths through pack_padded_sequence(enforce_sorted=False)
                   and pad_packed_sequence(total_length=T), so padded steps are zeros
  gout, ghn (, gcn)  seed gradients: the loss is sum(out*gout) + sum(hn*ghn) (+ sum(cn*gcn))
  gx, gh0 (, gc0), g.<name>  the gradients of the input, the initial states and every parameter
Cells "lstm_cell.", "gru_cell.", "rnn_cell." (relu): x, h (, c), w.<name>, h1 (, c1), seeds
gh1 (, gc1) and the gradients gx, gh (, gc), g.<name>.
The modules run in float64 (the reference is exact to float32's eyes); values are stored as F32.

rnn_lstm_state.safetensors is the state_dict of the module of case "lstm_sd." (2 layers,
bidirectional, 5 -> 4) exactly as torch names it, for the strict-load test; rnn.safetensors
holds that case's input and output.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_rnn.py
"""
import os

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from golden_io import save

torch.manual_seed(1234)
here = os.path.dirname(os.path.abspath(__file__))
out = {}

MODES = {
    "lstm": lambda i, h, **k: nn.LSTM(i, h, **k),
    "gru": lambda i, h, **k: nn.GRU(i, h, **k),
    "rnn_tanh": lambda i, h, **k: nn.RNN(i, h, nonlinearity="tanh", **k),
    "rnn_relu": lambda i, h, **k: nn.RNN(i, h, nonlinearity="relu", **k),
}

# (num_layers, bidirectional, batch_first, has_h0, lengths or None, bias, T, B, I, H)
CASES = [
    (1, False, False, False, None, True, 4, 3, 5, 4),
    (2, True, True, True, None, True, 3, 2, 3, 5),
    (2, False, False, True, [4, 2, 5], True, 5, 3, 3, 4),
    (1, True, True, False, [3, 1, 4, 2], True, 4, 4, 2, 3),
    (2, True, False, True, [2, 3], False, 3, 2, 4, 3),
]


def run_case(prefix, mode, case):
    L, bi, bf, has_h0, lengths, bias, T, B, I, H = case
    m = MODES[mode](I, H, num_layers=L, bidirectional=bi, batch_first=bf, bias=bias).double()
    D = 2 if bi else 1
    x = torch.randn(B, T, I, dtype=torch.float64) if bf else torch.randn(T, B, I, dtype=torch.float64)
    x.requires_grad_(True)
    lstm = mode == "lstm"
    h0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True) if has_h0 else None
    c0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True) if has_h0 and lstm else None
    state = None
    if has_h0:
        state = (h0, c0) if lstm else h0
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    y, st = m(inp, state)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, batch_first=bf, total_length=T)
    hn, cn = (st if lstm else (st, None))
    gout = torch.randn_like(y)
    ghn = torch.randn_like(hn)
    loss = (y * gout).sum() + (hn * ghn).sum()
    if lstm:
        gcn = torch.randn_like(cn)
        loss = loss + (cn * gcn).sum()
    loss.backward()
    p = [L, int(bi), int(bf), int(has_h0), int(lengths is not None), int(bias), I, H]
    out[prefix + "p"] = torch.tensor(p, dtype=torch.int32)
    out[prefix + "x"] = x
    out[prefix + "out"] = y
    out[prefix + "hn"] = hn
    out[prefix + "gout"] = gout
    out[prefix + "ghn"] = ghn
    out[prefix + "gx"] = x.grad
    if lengths is not None:
        out[prefix + "len"] = torch.tensor(lengths, dtype=torch.int32)
    if has_h0:
        out[prefix + "h0"] = h0
        out[prefix + "gh0"] = h0.grad
    if lstm:
        out[prefix + "cn"] = cn
        out[prefix + "gcn"] = gcn
        if has_h0:
            out[prefix + "c0"] = c0
            out[prefix + "gc0"] = c0.grad
    for name, t in m.named_parameters():
        out[prefix + "w." + name] = t
        out[prefix + "g." + name] = t.grad
    return m


for mode in MODES:
    for k, case in enumerate(CASES):
        run_case(f"{mode}{k + 1}.", mode, case)

# the cells: one step from given states (x [B, I], h [B, H], c [B, H])
CELLS = {
    "lstm_cell": nn.LSTMCell(3, 4),
    "gru_cell": nn.GRUCell(3, 4),
    "rnn_cell": nn.RNNCell(3, 4, nonlinearity="relu"),
}
for name, cell in CELLS.items():
    prefix = name + "."
    cell = cell.double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    if name == "lstm_cell":
        c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        h1, c1 = cell(x, (h, c))
        gh1, gc1 = torch.randn_like(h1), torch.randn_like(c1)
        ((h1 * gh1).sum() + (c1 * gc1).sum()).backward()
        out[prefix + "c"], out[prefix + "c1"], out[prefix + "gc1"], out[prefix + "gc"] = c, c1, gc1, c.grad
    else:
        h1 = cell(x, h)
        gh1 = torch.randn_like(h1)
        (h1 * gh1).sum().backward()
    out[prefix + "x"], out[prefix + "h"], out[prefix + "h1"], out[prefix + "gh1"] = x, h, h1, gh1
    out[prefix + "gx"], out[prefix + "gh"] = x.grad, h.grad
    for pname, t in cell.named_parameters():
        out[prefix + "w." + pname] = t
        out[prefix + "g." + pname] = t.grad

# the strict-load case: a float32 module whose state_dict is its own file
sd = nn.LSTM(5, 4, num_layers=2, bidirectional=True)
xs = torch.randn(3, 2, 5)
with torch.no_grad():
    ys, (hs, cs) = sd(xs)
out["lstm_sd.x"] = xs
out["lstm_sd.out"] = ys
out["lstm_sd.hn"] = hs
out["lstm_sd.cn"] = cs
save(os.path.join(here, "rnn_lstm_state.safetensors"), dict(sd.state_dict()))
save(os.path.join(here, "rnn.safetensors"), out)
print(f"wrote {len(out)} tensors to rnn.safetensors and {len(sd.state_dict())} to rnn_lstm_state.safetensors")
