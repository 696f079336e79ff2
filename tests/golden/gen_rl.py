"""PyTorch references for tests/test_rl.c: three DQN updates of examples/rl_cartpole's agent
(tools/rl_cartpole_torch.py's dqn_update, the same function the PyTorch port trains with).

Run: /usr/bin/python3 tests/golden/gen_rl.py   (writes tests/golden/rl.safetensors)

A Q network 4-16-16-2 (Linear-ReLU-Linear-ReLU-Linear) and a target network of the same
shape with other weights, both scaled up (x3) from the default initialisation so that some
TD errors exceed 1 (the Huber loss's linear part) and some do not (its quadratic part). A
batch of 6 transitions, two of them terminal; gamma 0.99; Adam lr 0.01. Three updates on
three batches, the target fixed (the later ones exercise Adam's moments): b1 plain DQN
without clipping, b2 with the gradient norm clipped to 0.5 (below the norm, so the clip
acts), b3 Double DQN's target with the clip.

Names: q.<param>, target.<param> (state_dict names: 0.weight, 0.bias, 2.weight, ...), and
for k in 1, 2, 3: b<k>.s [6, 4], b<k>.a [6] (I32), b<k>.r [6], b<k>.s2 [6, 4], b<k>.done [6],
b<k>.loss [1] (the Huber loss before the step), b<k>.q.<param> (the Q network after it),
b<k>.norm [1] (the gradient norm before clipping).
"""
import os
import sys

import torch

from golden_io import save

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from rl_cartpole_torch import dqn_update, mlp  # noqa: E402

torch.manual_seed(18)
q, target = mlp([4, 16, 16, 2]), mlp([4, 16, 16, 2])
with torch.no_grad():
    for p in list(q.parameters()) + list(target.parameters()):
        p.mul_(3.0)
out = {}
for name, p in q.state_dict().items():
    out["q." + name] = p.clone()
for name, p in target.state_dict().items():
    out["target." + name] = p.clone()
opt = torch.optim.Adam(q.parameters(), lr=0.01)
huber_parts = set()
for k, clip, double in ((1, 0.0, False), (2, 0.5, False), (3, 0.5, True)):
    s = torch.randn(6, 4)
    s2 = s + 0.1 * torch.randn(6, 4)
    a = torch.tensor([0, 1, 1, 0, 1, 0])
    r = torch.ones(6)
    done = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    with torch.no_grad():
        y = r + 0.99 * target(s2).max(1).values * (1 - done)
        td = q(s).gather(1, a.view(-1, 1)).view(-1) - y
    huber_parts |= {bool(t) for t in (td.abs() > 1)}
    # the gradient norm, to show the clip acts (the update recomputes the same gradients)
    with torch.no_grad():
        nxt = target(s2).gather(1, q(s2).argmax(1, keepdim=True)).view(-1) if double else target(s2).max(1).values
        y = r + 0.99 * nxt * (1 - done)
        # Double DQN's target must differ from the max's somewhere, or b3 would not test it
        assert not double or (nxt != target(s2).max(1).values).any(), f"batch {k}: both targets agree"
    q.zero_grad()
    torch.nn.functional.smooth_l1_loss(q(s).gather(1, a.view(-1, 1)).view(-1), y).backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in q.parameters()))
    assert clip == 0 or norm > 2 * clip, f"batch {k}: the gradient norm {norm} should exceed the clip {clip}"
    loss = dqn_update(q, target, opt, s, a, r, s2, done, 0.99, clip, double)
    b = f"b{k}."
    out[b + "s"], out[b + "a"], out[b + "r"], out[b + "s2"], out[b + "done"] = s, a, r, s2, done
    out[b + "loss"] = loss.reshape(1)
    out[b + "norm"] = norm.reshape(1)
    for name, p in q.state_dict().items():
        out[b + "q." + name] = p.clone()
assert huber_parts == {True, False}, "the batches should reach both parts of the Huber loss"

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rl.safetensors"), out)
print(f"wrote {len(out)} tensors")
