import { type DType, dtypeFromSafetensors, itemSize } from '../dtype.js';
import { CoreError } from '../errors.js';

/** One tensor's entry in a safetensors header. Offsets are relative to the data section. */
export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** [begin, end) byte offsets within the data section. */
  readonly dataOffsets: readonly [number, number];
  readonly byteLength: number;
}

export interface SafetensorsHeader {
  /** Size of the JSON header in bytes (the 8-byte length prefix not included). */
  readonly headerByteLength: number;
  /** Absolute file offset where tensor data starts: 8 + headerByteLength. */
  readonly dataStart: number;
  readonly metadata: Readonly<Record<string, string>>;
  /** Entries in file order (ascending offsets). */
  readonly entries: readonly SafetensorsEntry[];
  readonly byName: ReadonlyMap<string, SafetensorsEntry>;
}

/** The reference implementation refuses headers above 100 MB; so do we. */
export const MAX_HEADER_BYTES = 100_000_000;

function fail(
  code: string,
  file: string,
  what: string,
  details: Record<string, unknown> = {},
): never {
  throw new CoreError(code, `${file}: ${what}`, { file, ...details });
}

/**
 * Reads the 8-byte little-endian header length and checks it against the file size before
 * anything is allocated for the header.
 */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    fail(
      'SAFETENSORS_TRUNCATED',
      file,
      `file is ${fileSize} bytes, too short for a safetensors header (8-byte length prefix). Is the download complete?`,
    );
  }
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail(
      'SAFETENSORS_HEADER_TOO_LARGE',
      file,
      `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit; this is not a safetensors file or it is corrupt.`,
      {
        headerByteLength: n.toString(),
      },
    );
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    fail(
      'SAFETENSORS_TRUNCATED',
      file,
      `header says ${len} bytes but the file has only ${fileSize - 8} after the length prefix. The file is truncated.`,
      {
        headerByteLength: len,
      },
    );
  }
  return len;
}

/**
 * Collects the keys of the top-level JSON object so duplicates can be refused
 * (JSON.parse silently keeps the last one). Assumes `text` is already valid JSON.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      i++;
      while (i < text.length && text.charCodeAt(i) !== 0x22) {
        if (text.charCodeAt(i) === 0x5c /* \ */) i++;
        i++;
      }
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(start, i + 1)) as string);
        expectKey = false;
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      expectKey = depth === 1;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    } else if (c === 0x2c /* , */ && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses and validates a safetensors JSON header against the file size. Checks: valid UTF-8
 * JSON object, no duplicate names, string metadata, known dtypes, shapes of non-negative
 * integers, `numel x itemSize == end - begin`, offsets inside the data section, entries
 * sorted, contiguous and non-overlapping and covering the data section exactly.
 */
export function parseHeader(
  headerBytes: Uint8Array,
  fileSize: number,
  file: string,
): SafetensorsHeader {
  const headerByteLength = headerBytes.length;
  const dataStart = 8 + headerByteLength;
  const dataSize = fileSize - dataStart;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    fail('SAFETENSORS_HEADER_INVALID', file, 'header is not valid UTF-8.');
  }
  // The format allows trailing spaces as padding; nothing else.
  text = text.replace(/ +$/, '');
  if (!text.startsWith('{'))
    fail('SAFETENSORS_HEADER_INVALID', file, 'header is not a JSON object.');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail('SAFETENSORS_HEADER_INVALID', file, `header is not valid JSON (${(e as Error).message}).`);
  }
  if (!isPlainObject(json))
    fail('SAFETENSORS_HEADER_INVALID', file, 'header is not a JSON object.');

  const keys = topLevelKeys(text);
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k))
      fail('SAFETENSORS_DUPLICATE', file, `tensor "${k}" appears twice in the header.`, {
        tensor: k,
      });
    seen.add(k);
  }

  let metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(value) || !Object.values(value).every((v) => typeof v === 'string')) {
        fail('SAFETENSORS_HEADER_INVALID', file, '__metadata__ must be an object of strings.');
      }
      metadata = value as Record<string, string>;
      continue;
    }
    const where = { tensor: name };
    if (!isPlainObject(value))
      fail('SAFETENSORS_HEADER_INVALID', file, `tensor "${name}": entry is not an object.`, where);
    const { dtype: dtypeName, shape, data_offsets: offsets } = value;
    if (typeof dtypeName !== 'string')
      fail('SAFETENSORS_HEADER_INVALID', file, `tensor "${name}": missing dtype.`, where);
    const dtype = dtypeFromSafetensors(dtypeName);
    if (dtype === undefined) {
      fail(
        'SAFETENSORS_DTYPE_UNSUPPORTED',
        file,
        `tensor "${name}": dtype ${dtypeName} is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL are).`,
        {
          ...where,
          dtype: dtypeName,
        },
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(
        'SAFETENSORS_HEADER_INVALID',
        file,
        `tensor "${name}": shape must be a list of non-negative integers.`,
        where,
      );
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(
        'SAFETENSORS_HEADER_INVALID',
        file,
        `tensor "${name}": data_offsets must be [begin, end] with 0 <= begin <= end.`,
        where,
      );
    }
    let count = 1;
    for (const d of shape as number[]) count *= d;
    const byteLength = offsets[1] - offsets[0];
    if (!Number.isSafeInteger(count * itemSize(dtype)) || count * itemSize(dtype) !== byteLength) {
      fail(
        'SAFETENSORS_SIZE_MISMATCH',
        file,
        `tensor "${name}": shape [${(shape as number[]).join(', ')}] of ${dtypeName} needs ${count * itemSize(dtype)} bytes, offsets span ${byteLength}.`,
        where,
      );
    }
    if (offsets[1] > dataSize) {
      fail(
        'SAFETENSORS_TRUNCATED',
        file,
        `tensor "${name}": data ends at byte ${dataStart + offsets[1]} but the file has ${fileSize}. The file is truncated.`,
        where,
      );
    }
    entries.push({
      name,
      dtype,
      shape: shape as number[],
      dataOffsets: [offsets[0], offsets[1]],
      byteLength,
    });
  }

  entries.sort(
    (a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1],
  );
  let cursor = 0;
  for (const e of entries) {
    if (e.dataOffsets[0] !== cursor) {
      const what =
        e.dataOffsets[0] < cursor
          ? 'overlaps the previous tensor'
          : `leaves a gap of ${e.dataOffsets[0] - cursor} bytes before it`;
      fail(
        'SAFETENSORS_LAYOUT_INVALID',
        file,
        `tensor "${e.name}" ${what}; tensors must be contiguous and non-overlapping.`,
        { tensor: e.name },
      );
    }
    cursor = e.dataOffsets[1];
  }
  if (cursor !== dataSize) {
    fail(
      'SAFETENSORS_LAYOUT_INVALID',
      file,
      `tensor data covers ${cursor} bytes but the data section has ${dataSize}; the file has trailing bytes or is corrupt.`,
    );
  }
  return {
    headerByteLength,
    dataStart,
    metadata,
    entries,
    byName: new Map(entries.map((e) => [e.name, e])),
  };
}
