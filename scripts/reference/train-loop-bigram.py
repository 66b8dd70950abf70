"""Reference trajectory of @lora/train's training loop on a model small enough to need no graph:
a bigram language model (logits of position t = W[token_t] + b), trained in PyTorch with the
semantics of transformers' Trainer (>= 4.46), written out step by step here:

- data in file order (Trainer with a SequentialSampler), batches of `batch_size` rows, the last
  partial batch kept, right padding with label -100;
- `grad_accum` micro-batches per optimizer step; an epoch's last step takes the micro-batches that
  remain (Trainer's `remainder`); the next epoch starts a new step;
- loss of a step = sum of token cross-entropies (logits at t against labels[t+1], -100 ignored) over
  the step's micro-batches / number of such label tokens (Trainer's num_items_in_batch);
- clip_grad_norm_, torch.optim.AdamW with weight decay on W but not on the bias (Trainer's decay
  groups), get_cosine_schedule_with_warmup stepped after each optimizer step.

Run from the repository root:  .venv-ref/bin/python scripts/reference/train-loop-bigram.py
Writes packages/train/src/loop/testdata/bigram-trajectory.json (small).
"""

import json
import math
import pathlib

import torch
from transformers import get_cosine_schedule_with_warmup

OUT = pathlib.Path(__file__).resolve().parents[2] / "packages/train/src/loop/testdata/bigram-trajectory.json"
V, ROWS, BATCH, ACCUM, STEPS, WARMUP = 16, 13, 2, 2, 10, 2
LR, BETAS, EPS, WD, MAX_NORM = 5e-2, (0.9, 0.999), 1e-8, 0.1, 1.0

g = torch.Generator().manual_seed(1234)
rows = []
for i in range(ROWS):
    n = int(torch.randint(2, 10, (1,), generator=g))
    ids = torch.randint(0, V, (n,), generator=g).tolist()
    labels = list(ids)
    if i % 3 == 1:  # a prompt part with no loss
        for t in range(min(2, n - 1)):
            labels[t] = -100
    rows.append({"input_ids": ids, "labels": labels})
W = torch.nn.Parameter(torch.randn(V, V, generator=g) * 0.5)
b = torch.nn.Parameter(torch.randn(V, generator=g) * 0.1)
init = {"weight": W.detach().flatten().tolist(), "bias": b.detach().flatten().tolist()}

opt = torch.optim.AdamW([{"params": [W], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}],
                        lr=LR, betas=BETAS, eps=EPS)
sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)

batches = [rows[i:i + BATCH] for i in range(0, ROWS, BATCH)]
steps_per_epoch = math.ceil(len(batches) / ACCUM)


def collate(batch):
    T = max(len(r["input_ids"]) for r in batch)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
    return ids, labels


trajectory = []
for k in range(STEPS):
    j = k % steps_per_epoch
    micro = batches[j * ACCUM : (j + 1) * ACCUM]
    collated = [collate(m) for m in micro]
    num_items = sum(int((lab[:, 1:] != -100).sum()) for _, lab in collated)
    opt.zero_grad()
    total = 0.0
    for ids, lab in collated:
        logits = W[ids] + b  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V).float(), lab[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        ) / num_items
        loss.backward()
        total += loss.item()
    lr = opt.param_groups[0]["lr"]
    norm = torch.nn.utils.clip_grad_norm_([W, b], MAX_NORM)
    opt.step()
    sched.step()
    trajectory.append({"step": k + 1, "loss": total, "lr": lr, "grad_norm": float(norm), "tokens": num_items})

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps({
    "torch": torch.__version__,
    "settings": {"vocab": V, "batch_size": BATCH, "grad_accum": ACCUM, "steps": STEPS, "warmup": WARMUP,
                 "lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD, "max_grad_norm": MAX_NORM,
                 "schedule": "cosine"},
    "rows": rows,
    "init": init,
    "steps": trajectory,
    "final": {"weight": W.detach().flatten().tolist(), "bias": b.detach().flatten().tolist()},
}))
print(f"wrote {OUT}")
