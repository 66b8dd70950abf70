/**
 * `json.dumps` as Python writes it (", " and ": " separators, floats as `repr`: `0.0`, `1e-05`),
 * so the JSON bitsandbytes stores in a uint8 tensor is byte-identical to what transformers saves.
 */
export function pythonJsonDumps(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'string') return pythonString(value);
  if (typeof value === 'number') return String(value); // integers; wrap floats in PyFloat
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(', ')}]`;
  if (typeof value === 'object') {
    return `{${Object.entries(value as Record<string, unknown>)
      .map(([k, v]) => `${pythonString(k)}: ${pythonJsonDumps(v)}`)
      .join(', ')}}`;
  }
  throw new TypeError(`cannot encode ${typeof value}`);
}

/** Marks a number as a Python float (so 0 prints as `0.0`). */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 or from 1e16. */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, expText] = x.toExponential().split('e');
  const exp = Number(expText);
  if (exp < -4 || exp >= 16) {
    const sign = exp < 0 ? '-' : '+';
    return `${mantissa}e${sign}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const negative = mantissa.startsWith('-');
  const digits = mantissa.replace('-', '').replace('.', '');
  let text: string;
  if (exp >= 0) {
    const intPart = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
    const frac = digits.slice(exp + 1);
    text = `${intPart}.${frac || '0'}`;
  } else {
    text = `0.${'0'.repeat(-exp - 1)}${digits}`;
  }
  return negative ? `-${text}` : text;
}

function pythonString(s: string): string {
  // json.dumps escapes non-ASCII by default (ensure_ascii=True).
  return JSON.stringify(s).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}
