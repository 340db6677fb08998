"""Issue 20: client processes train without importing torch._dynamo (runner.lean_torch),
with the same bits as torch's own optimizer wrappers, and hand back to them once anything
imports the compiler."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

TRAIN = """
import hashlib, json, sys
import torch
installed = 0
if sys.argv[1] == "lean":
    from runner.lean_torch import eager_optimizers
    installed = eager_optimizers()
    assert eager_optimizers() == 0  # once per process
if sys.argv[2] == "compile":
    torch.compile(lambda x: x * 2)(torch.ones(2))  # imports torch._dynamo
h = hashlib.sha256()
OPTIMIZERS = [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-3)), ("Adam", {}), ("AdamW", dict(weight_decay=0.01))]
for name, kw in [*OPTIMIZERS, ("RMSprop", {}), ("Adagrad", {})]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    o = getattr(torch.optim, name)(m.parameters(), **kw)
    for _ in range(4):
        o.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 8)), torch.tensor([0, 1, 2, 0]))
        loss.backward()
        o.step()
        assert torch.is_grad_enabled()  # step() restores grad mode as torch's wrapper does
    o.load_state_dict(o.state_dict())
    for p in m.parameters():
        h.update(p.detach().numpy().tobytes())
print(json.dumps({"digest": h.hexdigest(), "dynamo": "torch._dynamo" in sys.modules, "installed": installed}))
"""


def _train(mode: str, compile_first: str = "no") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN, mode, compile_first], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_eager_optimizers_skip_the_compiler_with_the_same_bits():
    torch_own, lean = _train("plain"), _train("lean")
    assert torch_own["dynamo"] is True  # torch's wrappers import it: the shortcut has something to skip
    assert lean["dynamo"] is False and lean["installed"] > 0
    assert lean["digest"] == torch_own["digest"]


def test_a_process_that_compiles_gets_torchs_own_path():
    """Shortcuts installed, then the task compiles: every later call takes torch's path."""
    got = _train("lean", "compile")
    assert got["installed"] > 0 and got["dynamo"] is True
    assert got["digest"] == _train("plain")["digest"]
