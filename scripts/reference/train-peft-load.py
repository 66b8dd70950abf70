"""Checks that real PEFT loads what `lora train` writes, and that it computes what `lora eval` says.

Run from the repository root with the reference venv, after the packages are built:

    .venv-ref/bin/python scripts/reference/train-peft-load.py

It trains an adapter with `lora train` (and a full fine-tune with `--method full`) on the tiny LLaMA
of packages/train/src/testdata/trajectory, loads the adapter with PeftModel.from_pretrained (a key it
did not recognise would leave PEFT's own init in place, and the loss check would fail) and the full model with LlamaForCausalLM.from_pretrained, and
compares PyTorch's mean loss on eval.jsonl with `lora eval --json` on the same files. Prints one line
per check; exits non-zero on a mismatch. Writes nothing into the repository.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "packages", "train", "src", "testdata", "trajectory")
LORA = [os.environ.get("NODE", "node"), os.path.join(ROOT, "apps", "cli", "bin", "lora.js")]


def lora(*args):
    out = subprocess.run(LORA + list(args), check=True, capture_output=True, text=True)
    return out.stdout


def torch_loss(model):
    total, count = 0.0, 0
    with open(os.path.join(DATA, "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with torch.no_grad():
        for r in rows:
            logits = model(input_ids=torch.tensor([r["input_ids"]])).logits.double()
            lab = torch.tensor(r["labels"])
            total += torch.nn.functional.cross_entropy(logits[0, :-1], lab[1:], ignore_index=-100, reduction="sum").item()
            count += int((lab[1:] != -100).sum())
    return total / count


def main():
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(DATA, "model")
        common = ["--model", model_dir, "--data", os.path.join(DATA, "train.jsonl"), "--steps", "6", "--lr", "1e-2", "--quiet"]
        adapter = os.path.join(tmp, "adapter")
        lora("train", *common, "--targets", "all-linear", "--rank", "4", "--dropout", "0", "-o", adapter)
        base = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, adapter).eval()
        theirs = torch_loss(peft_model)
        ours = json.loads(lora("eval", "--model", model_dir, "--adapter", adapter, "--data",
                               os.path.join(DATA, "eval.jsonl"), "--json"))["loss"]
        good = abs(theirs - ours) <= 1e-4 * theirs
        ok &= good
        print(f"PEFT loads the lora train adapter; eval loss PEFT {theirs:.6f} vs lora eval {ours:.6f}: {'ok' if good else 'MISMATCH'}")

        full = os.path.join(tmp, "full")
        lora("train", *common, "--method", "full", "-o", full)
        tuned = LlamaForCausalLM.from_pretrained(full, torch_dtype=torch.float32).eval()
        theirs = torch_loss(tuned)
        ours = json.loads(lora("eval", "--model", full, "--data", os.path.join(DATA, "eval.jsonl"), "--json"))["loss"]
        good = abs(theirs - ours) <= 1e-4 * theirs
        ok &= good
        print(f"transformers loads the full fine-tune; eval loss {theirs:.6f} vs lora eval {ours:.6f}: {'ok' if good else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
