"""Reference values for one LoRA gradient step, from the real transformers and PEFT (the tests need no Python).

Run from the repository root with the reference venv (torch 2.13, transformers 5.17, peft 0.21):

    /work/main/.venv-ref/bin/python scripts/reference/grad-step.py

It rewrites packages/runtime-onnx/src/training/testdata/grad-step/:

- model/: a tiny LLaMA (GQA: 4 query heads on 2 kv heads, 2 layers, hidden 32, vocabulary 64) with
  seeded float32 weights, as config.json + model.safetensors;
- adapter/: a PEFT LoRA adapter (r = 4, alpha = 8) on all seven linears of every layer, saved by
  PEFT's save_pretrained; B is random (not PEFT's zero init) so that dA is not trivially zero;
- expected.json: the batch (token ids, attention mask, labels as 0/1 loss weights) and, per case,
  transformers' loss (mean cross-entropy over label tokens after the shift) and the label count;
- expected.safetensors: per case, dLoss/dA and dLoss/dB of every LoRA tensor (PEFT layout, keys
  `<case>.<PEFT key>`), and the dropout masks of the "dropout" case (`mask.<module>`).

Cases: "plain" (no dropout, alpha / r scaling) and "dropout" (rsLoRA scaling alpha / sqrt(r), and a
fixed dropout mask per LoRA module: PEFT's dropout module replaced by a multiplication with a mask of
0 and 1 / (1 - p), which is what torch's dropout draws). Everything is computed in float64 from the
float32 weights, so the reference carries no float32 rounding.
"""

import json
import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "packages", "runtime-onnx", "src", "training", "testdata", "grad-step")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 4
ALPHA = 8
DROPOUT = 0.25

CONFIG = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    vocab_size=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)

# Two rows of 8 tokens: row 0 has a 3-token prompt (no loss on it), row 1 is right-padded after 6 tokens.
INPUT_IDS = [[1, 17, 5, 42, 8, 33, 60, 2], [1, 9, 9, 27, 51, 4, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]]
LOSS_WEIGHTS = [[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0, 0]]


def seeded_model():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * (2 * torch.rand_like(p) - 1))
            elif "embed_tokens" in name:
                p.copy_(2 * torch.rand_like(p) - 1)
            else:
                p.copy_((2 * torch.rand_like(p) - 1) / p.shape[1] ** 0.5)
    return model


class FixedMask(torch.nn.Module):
    """Stands in for PEFT's lora_dropout: x * mask, with mask values 0 and 1 / (1 - p)."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def lora_modules(peft_model):
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            yield name, module


def run_case(base_dir, adapter_state, case, rslora, dropout):
    model = LlamaForCausalLM.from_pretrained(os.path.join(base_dir), attn_implementation="eager")
    model = model.to(torch.float64)
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=TARGETS,
        lora_dropout=dropout,
        use_rslora=rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    result = peft_model.load_state_dict(adapter_state, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]
    peft_model.to(torch.float64)
    ids = torch.tensor(INPUT_IDS)
    masks = {}
    if dropout > 0:
        gen = torch.Generator().manual_seed(7)
        for name, module in lora_modules(peft_model):
            short = name.replace("base_model.model.", "")
            keep = torch.rand(ids.shape + (module.in_features,), generator=gen) >= dropout
            mask = keep.to(torch.float64) / (1 - dropout)
            module.lora_dropout["default"] = FixedMask(mask)
            masks[f"mask.{short}"] = mask.to(torch.float32)
    labels = torch.tensor(
        [[tok if w else -100 for tok, w in zip(row, weights)] for row, weights in zip(INPUT_IDS, LOSS_WEIGHTS)]
    )
    out = peft_model(input_ids=ids, attention_mask=torch.tensor(ATTENTION_MASK), labels=labels)
    out.loss.backward()
    grads = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            grads[f"{case}.{name.replace('.default', '')}"] = p.grad.detach().to(torch.float64)
    label_count = int((labels[:, 1:] != -100).sum())
    return out.loss.item(), label_count, grads, masks


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    base_dir = os.path.join(OUT, "model")
    adapter_dir = os.path.join(OUT, "adapter")
    os.makedirs(base_dir)

    model = seeded_model()
    model.save_pretrained(base_dir, safe_serialization=True)
    # Keep only what the tests read: config.json and model.safetensors.
    for f in os.listdir(base_dir):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(base_dir, f))

    peft_model = get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, task_type="CAUSAL_LM")
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn_like(p))
    peft_model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))
    adapter_state = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}

    expected = {
        "input_ids": INPUT_IDS,
        "attention_mask": ATTENTION_MASK,
        "loss_weights": LOSS_WEIGHTS,
        "rank": RANK,
        "alpha": ALPHA,
        "targets": TARGETS,
        "cases": {},
    }
    tensors = {}
    for case, rslora, dropout in (("plain", False, 0.0), ("dropout", True, DROPOUT)):
        loss, count, grads, masks = run_case(base_dir, adapter_state, case, rslora, dropout)
        expected["cases"][case] = {"loss": loss, "label_count": count, "rslora": rslora, "dropout": dropout}
        tensors.update(grads)
        tensors.update(masks)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(json.dumps(expected["cases"]))


if __name__ == "__main__":
    main()
