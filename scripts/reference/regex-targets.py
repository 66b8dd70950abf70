"""Reference answers of Python's `re` and PEFT's own matchers for config regexes (the tests need no Python).

Run from the repository root with the reference venv (peft 0.21, Python 3.11):

    /work/main/.venv-ref/bin/python scripts/reference/regex-targets.py

It rewrites packages/core/src/lora/testdata/regex-targets.json with:

- "re": (pattern, mode, text) -> matched, for `re.fullmatch` / `re.match` / `re.search`; patterns
  Python refuses are listed with "error" (its message) instead.
- "compiles": patterns that use constructs a linear-time engine cannot run, each with whether Python
  accepts it (so the tests can tell "valid Python, unsupported" from "invalid").
- "targets": PEFT `check_target_module_exists(LoraConfig(...), name)` for configs with regex
  target_modules / exclude_modules, modules_to_save, layers_to_transform + layers_pattern.
- "pattern_keys": PEFT `get_pattern_key(keys, name)` (rank_pattern / alpha_pattern), null when no
  key applies (PEFT then returns the name itself).
"""

import json
import os
import re

from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

OUT = os.path.join("packages", "core", "src", "lora", "testdata", "regex-targets.json")

LLAMA = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.12.mlp.down_proj",
    "model.vision_tower.layers.0.self_attn.q_proj",
    "model.language_model.layers.3.self_attn.v_proj",
    "model.layers.1.mlp.experts.0.w1",
    "model.layers.0.mlp.experts.1.w1",
    "layers.0.self_attn.q_proj",
    "transformer.h.11.attn.c_attn",
    "classifier.dense",
    "pre_classifier.dense",
    "score",
    "lm_head",
    "q_proj",
    "x.]_proj",
]

# (pattern, texts) checked in all three modes.
RE_CASES = [
    ("q_proj", ["q_proj", "model.layers.0.self_attn.q_proj", "q_proj_x"]),
    (r".*\.(q|v)_proj", LLAMA[:6]),
    (r"a|ab", ["a", "ab", "abc"]),
    (r"proj", ["q_proj", "proj"]),
    (r"(?P<stack>model\.layers)\.\d{,2}\.self_attn\.[qv]_proj", LLAMA[:4] + ["model.layers.123.self_attn.q_proj"]),
    (r"\A.*[]q]_proj\Z", ["x.]_proj", "x.q_proj", "x.v_proj"]),
    (r"[^]]+", ["abc", "a]c"]),
    (r"[[:alpha:]]+", ["abc", "[:a]", ":", "alpha]"]),
    (r"a{,}", ["", "aaa", "a{,}"]),
    (r"a{}", ["a{}", "a"]),
    (r"a{,2}", ["", "aa", "aaa", "a{,2}"]),
    (r"a{2,3}", ["a", "aa", "aaa", "aaaa"]),
    (r"a{x}", ["a{x}", "a"]),
    (r"\x71_proj", ["q_proj"]),
    (r"\u0071_proj", ["q_proj"]),
    (r"\161_proj", ["q_proj"]),
    (r"a\0b", ["a\0b", "ab"]),
    (r"[\1-\7]", ["\x03", "1"]),
    (r"(?i).*Q_PROJ", ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]),
    (r"(?i)(?s)a.b", ["A\nB", "axb"]),
    (r"(?i:Q)_proj", ["q_proj", "Q_proj", "q_PROJ"]),
    (r"(?i)(?-i:a)B", ["ab", "Ab", "aB"]),
    (r"(?i-s:a.)", ["A\n", "Ax"]),
    (r"(?s:a.)", ["a\n"]),
    (r"a{2}?|é+|[\]\-]", ["aa", "éé", "]", "-"]),
    (r"(?a)\w+", ["q_proj", "q.proj"]),
    (r"a(?#a comment)b", ["ab"]),
    (r"q\-\_\.proj", ["q-_.proj"]),
    (r"[\b]", ["\b", "b"]),
    (r"\bq_proj", ["q_proj", "self_attn.q_proj", "xq_proj"]),
    (r"layers\.\d+\.(self_attn|mlp)\..*", LLAMA[:4]),
    (r"^(?!.*vision).*\.(q|k|v)_proj$", LLAMA[:6]),
    (r"(?=.*layers\.1\.).*_proj", LLAMA[:4]),
    (r"(?i)(?!.*VISION).*q_proj", LLAMA[:6]),
    (r"\A(?!model)(?=.*q).*", LLAMA),
    (r"(?!x)", ["", "x", "y"]),
    (r".*^x", ["x", "ax"]),
    (r"(a*)*b", ["aab", "aa"]),
    # Catastrophic for backtracking engines; short texts keep Python itself quick here.
    (r"(a+)+$", ["a" * 18, "a" * 18 + "!"]),
    (r"(a|a)*$", ["a" * 18, "a" * 18 + "!"]),
    (r"(a|aa)*b", ["a" * 18 + "b", "a" * 18]),
    (r"(x+x+)+y", ["x" * 18 + "y", "x" * 18]),
]

# Valid Python a linear-time engine cannot run, and patterns Python refuses.
COMPILE_CASES = [
    r"(a)\1",
    r"(?P<n>a)(?P=n)",
    r"a(?=b)",
    r"a(?!b)",
    r"(?<=a)b",
    r"(?<!a)b",
    r"(?>a+)b",
    r"a*+",
    r"a++",
    r"a?+",
    r"a{2}+",
    r"(a)?(?(1)b|c)",
    r"\N{LATIN SMALL LETTER A}",
    r"(?x)a b",
    r"a{1001}",
    r"(a{100}){100}",
    r"a{2,1}",
    r"(?!a)b|c",
    r"(?!(?=a))a",
    r"(?!a)*b",
    r"a(?i)b",
    r"(?<x>a)",
    r"[abc",
    r"a\\",
    "a\\",
    r"\q",
    r"[\A]",
    r"(",
    r"a**",
    r"(?L)a",
    r"(?-i)a",
    r"\x4",
    r"[\8]",
    r"\400",
    r"(?P>n)",
    r"(?Q)",
]


def outcome(fn):
    try:
        return {"matched": fn() is not None}
    except re.error as e:
        return {"error": str(e)}


def main():
    cases = []
    for pattern, texts in RE_CASES:
        for text in texts:
            for mode in ("fullmatch", "match", "search"):
                f = getattr(re, mode)
                cases.append({"pattern": pattern, "mode": mode, "text": text, **outcome(lambda: f(pattern, text))})

    compiles = []
    for pattern in COMPILE_CASES:
        try:
            re.compile(pattern)
            compiles.append({"pattern": pattern, "python": True})
        except re.error as e:
            compiles.append({"pattern": pattern, "python": False, "error": str(e)})

    configs = [
        {"target_modules": r".*\.(q|v)_proj"},
        {"target_modules": r"^(?!.*vision).*\.(q|k|v)_proj$"},
        {"target_modules": r".*language_model.*\.(q_proj|v_proj)"},
        {"target_modules": r"(?P<s>model\.layers)\.\d{,1}\.self_attn\.[qv]_proj"},
        {"target_modules": ["q_proj", "v_proj"], "exclude_modules": r".*vision.*"},
        {"target_modules": ["q_proj", "v_proj"], "exclude_modules": r"(?!model\.layers\.0\.).*"},
        {"target_modules": r".*_proj", "exclude_modules": ["layers.0.self_attn.q_proj"]},
        {"target_modules": ["dense", "q_proj"], "modules_to_save": ["classifier"]},
        {"target_modules": ["dense", "q_proj"], "modules_to_save": [r"pre_\w+", r"layers\.1"]},
        {"target_modules": ["q_proj", "w1"], "layers_to_transform": [0]},
        {"target_modules": ["q_proj", "w1"], "layers_to_transform": [1]},
        {"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "layers"},
        {"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": ["blocks", r"lay\w+"]},
        {"target_modules": ["c_attn"], "layers_to_transform": 11, "layers_pattern": "h"},
        {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 3], "layers_pattern": r"(layers|h)"},
    ]
    targets = []
    for cfg in configs:
        config = LoraConfig(**cfg)
        for name in LLAMA:
            targets.append({"config": cfg, "name": name, "matched": bool(check_target_module_exists(config, name))})

    key_sets = [
        ["q_proj", r"self_attn\..*"],
        [r"self_attn\..*", "q_proj"],
        [r"layers\.0\.self_attn\.q_proj"],
        ["proj", r"layers\.1\..*"],
        [r"q_proj|v_proj", r"^model.*"],
        [r"(?i:Q)_PROJ", r"\d+\.mlp\.down_proj"],
        [r"model\.layers\.(?P<n>\d)\..*"],
    ]
    pattern_keys = []
    for keys in key_sets:
        for name in LLAMA:
            key = get_pattern_key(keys, name)
            pattern_keys.append({"keys": keys, "name": name, "key": key if key in keys else None})

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"re": cases, "compiles": compiles, "targets": targets, "pattern_keys": pattern_keys}, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} re cases, {len(compiles)} compile cases, {len(targets)} targets, {len(pattern_keys)} pattern keys")


if __name__ == "__main__":
    main()
