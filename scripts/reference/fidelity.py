"""Reference values from the real PEFT and transformers, for the fidelity tests (the tests need no Python).

Run from the repository root with the reference venv (torch 2.13, transformers 5.17, peft 0.21):

    /work/main/.venv-ref/bin/python scripts/reference/fidelity.py

It rewrites these small committed files:

- packages/adapters/src/testdata/peft-ties/: two PEFT-saved LoRA adapters (`first/`, `second/`) of a tiny
  two-layer model, and `expected.safetensors` with PEFT `add_weighted_adapter(..., "ties")` results
  (unequal and negative weights; majority sign "total" and "frequency").
- packages/adapters/src/testdata/peft-embedding/: a tiny LLaMA base (`base/`), a PEFT adapter on
  `embed_tokens` + `q_proj` saved with `save_embedding_layers=True` (so it stores
  `...embed_tokens.base_layer.weight`, here changed from the base's as after training or resizing),
  and `merged.safetensors`: PEFT's `merge_and_unload()` of base + adapter.
- packages/adapters/src/testdata/peft-modules-to-save/: a tiny LLaMA base and a PEFT adapter with
  `modules_to_save=["lm_head"]`. This folder and peft-embedding/ hold `trainable.json`: PEFT's
  `get_nb_trainable_parameters()` (what `print_trainable_parameters` prints) for the adapter
  loaded trainable on its base.
- packages/runtime-onnx/src/models/llama/testdata/rope/: one tiny random LLaMA (`model.safetensors`),
  a config per rope type and spelling (`<type>-legacy.json`: top-level `rope_theta` / `rope_scaling`;
  `<type>-v5.json`: transformers 5's `rope_parameters`), and `logits.json` with transformers
  `LlamaForCausalLM` logits of each config for a short and a long token sequence.
"""

import json
import math
import os
import shutil
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ADAPTERS = os.path.join(ROOT, "packages", "adapters", "src", "testdata")
ROPE = os.path.join(ROOT, "packages", "runtime-onnx", "src", "models", "llama", "testdata", "rope")


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


class TwoLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(12, 10, bias=False)
        self.v = torch.nn.Linear(12, 6, bias=False)

    def forward(self, x):
        return self.q(x) + self.v(x).sum()


def ties_reference():
    out = fresh(os.path.join(ADAPTERS, "peft-ties"))
    torch.manual_seed(1)
    model = get_peft_model(
        TwoLinears(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], init_lora_weights=False),
        adapter_name="first",
    )
    model.add_adapter("second", LoraConfig(r=4, lora_alpha=2, target_modules=["q", "v"], init_lora_weights=False))
    expected = {}
    cases = [
        ("total_unequal", [1.5, 0.4], "total"),
        ("frequency_unequal", [1.5, 0.4], "frequency"),
        ("total_negative", [0.7, -0.3], "total"),
    ]
    for name, weights, sign in cases:
        model.add_weighted_adapter(
            ["first", "second"], weights, name, combination_type="ties", density=0.5, majority_sign_method=sign
        )
        for module in ["q", "v"]:
            layer = getattr(model.base_model.model, module)
            expected[f"{name}.{module}.lora_A"] = layer.lora_A[name].weight.detach().clone().contiguous()
            expected[f"{name}.{module}.lora_B"] = layer.lora_B[name].weight.detach().clone().contiguous()
    model.save_pretrained(out, selected_adapters=["first", "second"])
    # PEFT writes the first selected adapter at the root only when it is named "default".
    for name in ["first", "second"]:
        assert os.path.exists(os.path.join(out, name, "adapter_model.safetensors")), name
    save_file(expected, os.path.join(out, "expected.safetensors"))
    os.remove(os.path.join(out, "README.md"))
    json.dump(
        {"density": 0.5, "cases": [{"name": n, "weights": w, "majority_sign_method": s} for n, w, s in cases]},
        open(os.path.join(out, "cases.json"), "w"),
        indent=1,
    )


def tiny_llama_config(**extra):
    return LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **extra,
    )


def embedding_reference():
    out = fresh(os.path.join(ADAPTERS, "peft-embedding"))
    torch.manual_seed(2)
    base = LlamaForCausalLM(tiny_llama_config())
    base.save_pretrained(os.path.join(out, "base"))
    model = get_peft_model(
        base,
        LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False),
    )
    # The embedding's base weight changed during fine-tuning (e.g. new token rows were trained):
    # the saved base_layer.weight is what PEFT loads as the new base embedding.
    with torch.no_grad():
        model.base_model.model.model.embed_tokens.base_layer.weight.add_(
            0.5 * torch.randn_like(model.base_model.model.model.embed_tokens.base_layer.weight)
        )
    model.save_pretrained(os.path.join(out, "adapter"), save_embedding_layers=True)
    fresh_base = LlamaForCausalLM.from_pretrained(os.path.join(out, "base"))
    merged = PeftModel.from_pretrained(fresh_base, os.path.join(out, "adapter")).merge_and_unload()
    sd = merged.state_dict()
    trainable_json(os.path.join(out, "base"), os.path.join(out, "adapter"), out)
    keep = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
    save_file({k: sd[k].contiguous() for k in keep}, os.path.join(out, "merged.safetensors"))
    # Keep the folder small: the adapter README and the base generation config are not needed.
    for junk in ["adapter/README.md", "base/generation_config.json"]:
        p = os.path.join(out, junk)
        if os.path.exists(p):
            os.remove(p)


def trainable_json(base_dir, adapter_dir, out):
    """PEFT's print_trainable_parameters figures for an adapter loaded trainable on its base."""
    base = LlamaForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    trainable, total = model.get_nb_trainable_parameters()
    base_params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(base_dir).parameters())
    json.dump(
        {"trainable_params": trainable, "all_params": total, "base_params": base_params},
        open(os.path.join(out, "trainable.json"), "w"),
        indent=1,
    )


def modules_to_save_reference():
    out = fresh(os.path.join(ADAPTERS, "peft-modules-to-save"))
    torch.manual_seed(4)
    base = LlamaForCausalLM(tiny_llama_config())
    base.save_pretrained(os.path.join(out, "base"))
    model = get_peft_model(
        base,
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    )
    model.save_pretrained(os.path.join(out, "adapter"))
    trainable_json(os.path.join(out, "base"), os.path.join(out, "adapter"), out)
    for junk in ["adapter/README.md", "base/generation_config.json"]:
        p = os.path.join(out, junk)
        if os.path.exists(p):
            os.remove(p)


# Rope variants, as (name, v5 rope_parameters without rope_theta, extra top-level keys).
THETA = 500.0
HEAD_HALF = 8  # head_dim 16


def rope_variants():
    short = [1.0 + 0.1 * i for i in range(HEAD_HALF)]
    long = [1.0 + 0.7 * i for i in range(HEAD_HALF)]
    return [
        ("default", {"rope_type": "default"}, {}),
        ("linear", {"rope_type": "linear", "factor": 2.0}, {}),
        (
            "llama3",
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            {},
        ),
        ("yarn", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, {}),
        (
            "yarn-mscale",
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 16,
                "beta_slow": 2,
                "mscale": 0.8,
                "mscale_all_dim": 0.5,
                "truncate": False,
            },
            {},
        ),
        # Sequences longer than max_position_embeddings (8 here) get a larger base, per call.
        ("dynamic", {"rope_type": "dynamic", "factor": 2.0}, {"max_position_embeddings": 8}),
        (
            "longrope",
            {
                "rope_type": "longrope",
                "short_factor": short,
                "long_factor": long,
                "original_max_position_embeddings": 8,
            },
            {},
        ),
    ]


SEQUENCES = {"short": [1, 5, 9, 2, 33, 17], "long": [3, 8, 1, 30, 22, 7, 7, 12, 39, 4, 0, 19, 25, 6]}


def rope_reference():
    out = fresh(ROPE)
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Larger q/k weights so rotary angles matter in the logits.
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    base = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 40,
        "hidden_size": 32,
        "intermediate_size": 40,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    }
    logits = {}
    for name, params, extra in rope_variants():
        legacy = {**base, "rope_theta": THETA, **extra}
        if params["rope_type"] != "default":
            legacy["rope_scaling"] = dict(params)
            # Older configs spell the type as "type".
            if name == "linear":
                legacy["rope_scaling"]["type"] = legacy["rope_scaling"].pop("rope_type")
        v5 = {**base, "rope_parameters": dict(params, rope_theta=THETA), **extra}
        results = {}
        for spelling, cfg in [("legacy", legacy), ("v5", v5)]:
            folder = fresh(os.path.join(out, "tmp"))
            json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
            shutil.copy(os.path.join(out, "model.safetensors"), folder)
            m = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            assert m.config.rope_parameters["rope_type"] == params["rope_type"], (name, spelling)
            with torch.no_grad():
                per_seq = {}
                for seq_name, ids in SEQUENCES.items():
                    # A fresh model per sequence: longrope's choice of factors is per call.
                    m = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
                    lg = m(torch.tensor([ids])).logits[0]
                    per_seq[seq_name] = [round(float(x), 6) for x in lg.reshape(-1)]
            results[spelling] = per_seq
            json.dump(cfg, open(os.path.join(out, f"{name}-{spelling}.json"), "w"), indent=1)
        # Both spellings are the same model for transformers.
        for seq_name in SEQUENCES:
            a = torch.tensor(results["legacy"][seq_name])
            b = torch.tensor(results["v5"][seq_name])
            assert torch.allclose(a, b, atol=1e-5), name
        logits[name] = results["v5"]
        shutil.rmtree(os.path.join(out, "tmp"))
    json.dump(
        {
            "sequences": SEQUENCES,
            "vocab": 40,
            "logits": logits,
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        },
        open(os.path.join(out, "logits.json"), "w"),
    )


if __name__ == "__main__":
    ties_reference()
    embedding_reference()
    modules_to_save_reference()
    rope_reference()
    print("reference files written", file=sys.stderr)
