/**
 * PEFT's tensor key naming. A saved key is the model's parameter name with the adapter name
 * removed, under the `base_model.model.` prefix of the PeftModel wrapper:
 *
 *   base_model.model.<module>.lora_A.weight          A  [r, in]
 *   base_model.model.<module>.lora_B.weight          B  [out, r]
 *   base_model.model.<module>.lora_B.bias            bias [out]            (lora_bias)
 *   base_model.model.<module>.lora_magnitude_vector  m  [out]              (DoRA)
 *   base_model.model.<module>.lora_embedding_A       A  [r, vocab]         (embedding LoRA)
 *   base_model.model.<module>.lora_embedding_B       B  [dim, r]
 *   base_model.model.<param>                         a saved parameter     (modules_to_save, bias)
 *
 * Keys written by other tools (or by PEFT's in-memory state dict) may still carry the adapter
 * name (`.lora_A.default.weight`, `.modules_to_save.default.weight`), and an adapter trained
 * on an already wrapped model has the prefix twice. Both are accepted on load.
 */

/** The prefix PEFT puts before every saved key. */
export const PEFT_PREFIX = 'base_model.model.';

/** What one tensor key of an adapter file holds. */
export type AdapterKeyKind = 'A' | 'B' | 'bias' | 'magnitude' | 'embeddingA' | 'embeddingB';

export type ParsedAdapterKey =
  | {
      readonly type: 'lora';
      readonly module: string;
      readonly kind: AdapterKeyKind;
      readonly adapterName?: string;
    }
  | { readonly type: 'saved'; readonly parameter: string; readonly adapterName?: string };

/** Removes every leading `base_model.model.`; returns the rest and how many were removed. */
export function stripPeftPrefix(key: string): { name: string; prefixCount: number } {
  let name = key;
  let prefixCount = 0;
  while (name.startsWith(PEFT_PREFIX)) {
    name = name.slice(PEFT_PREFIX.length);
    prefixCount++;
  }
  return { name, prefixCount };
}

// <module>.<lora part>[.<adapter name>][.<param>]; the adapter name is any part that is not
// the parameter suffix.
const LORA_KEY =
  /^(.+)\.(lora_A|lora_B|lora_magnitude_vector|lora_embedding_A|lora_embedding_B)(?:\.(?!(?:weight|bias)$)([^.]+))?(?:\.(weight|bias))?$/;

/**
 * Parses one key (prefix already stripped). Returns undefined for a key that cannot belong to
 * a LoRA adapter (e.g. `lora_A.bias`, which PEFT never writes).
 */
export function parseAdapterKey(name: string): ParsedAdapterKey | undefined {
  const m = LORA_KEY.exec(name);
  if (m) {
    const [, module, part, adapterName, param] = m;
    let kind: AdapterKeyKind | undefined;
    if (part === 'lora_A' && param === 'weight') kind = 'A';
    else if (part === 'lora_B' && param === 'weight') kind = 'B';
    else if (part === 'lora_B' && param === 'bias') kind = 'bias';
    else if (part === 'lora_magnitude_vector' && param !== 'bias') kind = 'magnitude';
    else if (part === 'lora_embedding_A' && param === undefined) kind = 'embeddingA';
    else if (part === 'lora_embedding_B' && param === undefined) kind = 'embeddingB';
    if (kind === undefined) return undefined;
    return adapterName === undefined
      ? { type: 'lora', module, kind }
      : { type: 'lora', module, kind, adapterName };
  }
  const saved = /^(.+)\.modules_to_save\.([^.]+)\.(.+)$/.exec(name);
  if (saved) return { type: 'saved', parameter: `${saved[1]}.${saved[3]}`, adapterName: saved[2] };
  return { type: 'saved', parameter: name };
}

/** The key PEFT writes for a LoRA tensor of `module` (prefix included, no adapter name). */
export function loraKey(module: string, kind: AdapterKeyKind): string {
  const suffix: Record<AdapterKeyKind, string> = {
    A: 'lora_A.weight',
    B: 'lora_B.weight',
    bias: 'lora_B.bias',
    magnitude: 'lora_magnitude_vector',
    embeddingA: 'lora_embedding_A',
    embeddingB: 'lora_embedding_B',
  };
  return `${PEFT_PREFIX}${module}.${suffix[kind]}`;
}

/** The key PEFT writes for a saved (modules_to_save) parameter. */
export function savedKey(parameter: string): string {
  return `${PEFT_PREFIX}${parameter}`;
}
