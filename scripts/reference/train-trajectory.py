"""Golden trajectories for @lora/train: 10 optimizer steps of a tiny LLaMA in PyTorch + PEFT with
transformers' Trainer semantics (>= 4.46), for LoRA (from an init adapter), QLoRA nf4 + double quant
(PyTorch on the dequantized base) and full fine-tuning. The tests need no Python.

Run from the repository root with the reference venv (torch 2.13, transformers 5.17, peft 0.21) and
the packages built (the QLoRA base is dequantized by @lora/quant through train-qlora-base.mjs):

    .venv-ref/bin/python scripts/reference/train-trajectory.py

Writes packages/train/src/testdata/trajectory/:
- model/: the tiny LLaMA (seeded; config.json + model.safetensors; no tokenizer, rows are pre-tokenized);
- train.jsonl: 13 pre-tokenized rows (some with a -100 prompt part);
- init-adapter/: the starting PEFT adapter (all seven linears, r 4, alpha 8, B random so every
  gradient is non-zero), saved by PEFT's save_pretrained;
- expected.json: settings and per-step loss, lr and grad norm for each method;
- expected-lora.safetensors, expected-qlora.safetensors: the final A and B (PEFT keys);
- expected-full.safetensors: every weight after full fine-tuning.
- eval.jsonl + expected.json "eval": base + init adapter on 4 prompt/completion rows (pre-tokenized,
  prompt labels -100): mean loss over label tokens, and how many completions greedy decoding
  reproduces (two rows are the model's own greedy continuation, two are not).

The semantics, written out (Trainer with a SequentialSampler, i.e. `lora train --no-shuffle`):
batches of 2 rows in file order, the last partial batch kept, right padding with label -100;
2 micro-batches per optimizer step, an epoch's last step takes those that remain; loss = sum of
token cross-entropies over the step's micro-batches / their label tokens after the shift;
clip_grad_norm_(1.0); torch.optim.AdamW (weight decay 0.01 except biases and norm weights);
get_cosine_schedule_with_warmup(2 warmup, 10 total), stepped after each optimizer step.
"""

import json
import math
import os
import shutil
import subprocess

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "packages", "train", "src", "testdata", "trajectory")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
S = dict(steps=10, batch_size=2, grad_accum=2, lr=5e-3, full_lr=1e-3, weight_decay=0.01, betas=[0.9, 0.999],
         eps=1e-8, max_grad_norm=1.0, warmup=2, schedule="cosine", rank=4, alpha=8, seed=0)

CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=32, intermediate_size=64,
              num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, vocab_size=64,
              rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64, tie_word_embeddings=False,
              hidden_act="silu", attention_bias=False, mlp_bias=False, initializer_range=0.15,
              torch_dtype="float32")


def make_model_and_data():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    torch.manual_seed(S["seed"])
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).float()
    with torch.no_grad():  # norms away from exactly 1 so their gradients matter in full training
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)
    g = torch.Generator().manual_seed(7)
    rows = []
    for i in range(13):
        n = int(torch.randint(4, 13, (1,), generator=g))
        ids = torch.randint(3, 64, (n,), generator=g).tolist()
        labels = list(ids)
        if i % 3 == 0:
            for t in range(3):
                labels[t] = -100
        rows.append({"input_ids": ids, "labels": labels} if i % 3 == 0 else {"input_ids": ids})
    with open(os.path.join(OUT, "train.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # The init adapter: PEFT's own init (A kaiming), B random so dA is non-zero from step 1.
    peft_model = get_peft_model(model, LoraConfig(r=S["rank"], lora_alpha=S["alpha"], target_modules=TARGETS,
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.save_pretrained(os.path.join(OUT, "init-adapter"))
    return rows


def collate(batch):
    T = max(len(r["input_ids"]) for r in batch)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    mask = torch.zeros(len(batch), T, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, r in enumerate(batch):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(r.get("labels", r["input_ids"]))
    return ids, mask, labels


def train(model, params, lr, rows):
    decay = [p for n, p in params if not ("bias" in n or "norm" in n)]
    no_decay = [p for n, p in params if ("bias" in n or "norm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": S["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(S["betas"]), eps=S["eps"])
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=S["warmup"], num_training_steps=S["steps"])
    batches = [rows[i:i + S["batch_size"]] for i in range(0, len(rows), S["batch_size"])]
    per_epoch = math.ceil(len(batches) / S["grad_accum"])
    out = []
    model.train()
    for k in range(S["steps"]):
        j = k % per_epoch
        micro = [collate(b) for b in batches[j * S["grad_accum"]:(j + 1) * S["grad_accum"]]]
        num_items = sum(int((lab[:, 1:] != -100).sum()) for _, _, lab in micro)
        opt.zero_grad()
        total = 0.0
        for ids, mask, lab in micro:
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     lab[:, 1:].reshape(-1), ignore_index=-100,
                                                     reduction="sum") / num_items
            loss.backward()
            total += loss.item()
        lr_k = opt.param_groups[0]["lr"]
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], S["max_grad_norm"])
        opt.step()
        sched.step()
        out.append({"step": k + 1, "loss": total, "lr": lr_k, "grad_norm": float(norm), "tokens": num_items})
    return out


def lora_run(base_weights_file, rows):
    base = LlamaForCausalLM.from_pretrained(os.path.join(OUT, "model"), torch_dtype=torch.float32)
    if base_weights_file:
        base.load_state_dict(load_file(base_weights_file), strict=False)
    model = PeftModel.from_pretrained(base, os.path.join(OUT, "init-adapter"), is_trainable=True)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    steps = train(model, params, S["lr"], rows)
    final = {k.replace(".default", ""): v.detach().clone().contiguous()
             for k, v in model.state_dict().items() if "lora_" in k}
    return steps, final


def make_eval():
    base = LlamaForCausalLM.from_pretrained(os.path.join(OUT, "model"), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(OUT, "init-adapter")).eval()
    g = torch.Generator().manual_seed(11)
    rows = []
    for i in range(4):
        prompt = torch.randint(3, 64, (5,), generator=g).tolist()
        with torch.no_grad():
            greedy = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                                    max_new_tokens=3, do_sample=False, pad_token_id=0)[0, 5:].tolist()
        completion = greedy if i % 2 == 0 else [(t + 1) % 64 for t in greedy]
        rows.append({"input_ids": prompt + completion, "labels": [-100] * 5 + completion})
    with open(os.path.join(OUT, "eval.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]])
            logits = model(input_ids=ids).logits.double()
            lab = torch.tensor([r["labels"]])
            total += torch.nn.functional.cross_entropy(logits[0, :-1], lab[0, 1:], ignore_index=-100,
                                                       reduction="sum").item()
            count += int((lab[0, 1:] != -100).sum())
    return {"loss": total / count, "tokens": count, "exact_match": 2, "rows": 4}


def main():
    rows = make_model_and_data()
    expected = {"torch": torch.__version__, "settings": S, "methods": {}}
    steps, final = lora_run(None, rows)
    save_file(final, os.path.join(OUT, "expected-lora.safetensors"))
    expected["methods"]["lora"] = steps

    subprocess.run(["node", os.path.join(ROOT, "scripts", "reference", "train-qlora-base.mjs"), OUT], check=True)
    deq = os.path.join(OUT, "dequantized.safetensors")
    steps, final = lora_run(deq, rows)
    os.remove(deq)
    save_file(final, os.path.join(OUT, "expected-qlora.safetensors"))
    expected["methods"]["qlora"] = steps

    model = LlamaForCausalLM.from_pretrained(os.path.join(OUT, "model"), torch_dtype=torch.float32)
    params = list(model.named_parameters())
    steps = train(model, params, S["full_lr"], rows)
    save_file({n: p.detach().contiguous() for n, p in params}, os.path.join(OUT, "expected-full.safetensors"))
    expected["methods"]["full"] = steps

    expected["eval"] = make_eval()

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
