"""Reference values for @lora/train's optimizer pieces, from the real torch and transformers.

Run from the repository root with the reference venv (see ../shared/reference/toolchain.md):

    .venv-ref/bin/python scripts/reference/train-optim.py

Writes packages/train/src/optim/testdata/optim-reference.json: 6 steps of torch.optim.AdamW
(weight decay on one of two parameters, as the Trainer's decay groups) fed fixed gradients, with
clip_grad_norm_ before each step and a cosine warmup schedule stepping after each; plus the
multipliers of get_{constant,linear,cosine}_schedule_with_warmup.
"""

import json
import pathlib

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

OUT = pathlib.Path(__file__).resolve().parents[2] / "packages/train/src/optim/testdata/optim-reference.json"

g = torch.Generator().manual_seed(0)
w = torch.nn.Parameter(torch.randn(3, 5, generator=g))
b = torch.nn.Parameter(torch.randn(4, generator=g))
init = {"w": w.detach().flatten().tolist(), "b": b.detach().flatten().tolist()}
opt = torch.optim.AdamW(
    [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
    lr=1e-2,
    betas=(0.9, 0.95),
    eps=1e-6,
)
sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
steps = []
for k in range(6):
    gw = torch.randn(3, 5, generator=g) * (3.0 if k == 3 else 0.3)
    gb = torch.randn(4, generator=g) * 0.3
    w.grad = gw.clone()
    b.grad = gb.clone()
    lr = opt.param_groups[0]["lr"]
    norm = torch.nn.utils.clip_grad_norm_([w, b], max_norm=1.0)
    opt.step()
    sched.step()
    steps.append(
        {
            "grad_w": gw.flatten().tolist(),
            "grad_b": gb.flatten().tolist(),
            "lr": lr,
            "grad_norm": float(norm),
            "w": w.detach().flatten().tolist(),
            "b": b.detach().flatten().tolist(),
            "exp_avg_w": opt.state[w]["exp_avg"].flatten().tolist(),
            "exp_avg_sq_b": opt.state[b]["exp_avg_sq"].flatten().tolist(),
        }
    )

schedules = {}
for name, make in [
    ("constant", lambda o: get_constant_schedule_with_warmup(o, num_warmup_steps=3)),
    ("linear", lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=3, num_training_steps=10)),
    ("cosine", lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=3, num_training_steps=10)),
]:
    o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = make(o)
    factors = []
    for _ in range(10):
        factors.append(o.param_groups[0]["lr"])
        o.step()
        s.step()
    schedules[name] = {"warmup": 3, "total": 10, "factors": factors}

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(
    json.dumps(
        {
            "torch": torch.__version__,
            "adamw": {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay_w": 0.1, "max_grad_norm": 1.0,
                      "warmup": 2, "total": 6, "init": init, "steps": steps},
            "schedules": schedules,
        }
    )
)
print(f"wrote {OUT}")
