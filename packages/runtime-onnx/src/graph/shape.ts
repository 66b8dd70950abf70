import { RuntimeError } from '../errors.js';
import type { Dim } from './types.js';

/** The dim for a size shape inference cannot tell (serialized as an unnamed dim). */
export const UNKNOWN_DIM = '?';

export function unknownDim(): Dim {
  return UNKNOWN_DIM;
}

export function isUnknown(d: Dim): boolean {
  return d === UNKNOWN_DIM;
}

/** NumPy broadcasting of two shapes; symbols broadcast against 1 and against themselves. */
export function broadcastShapes(a: readonly Dim[], b: readonly Dim[], where: string): Dim[] {
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = new Array(rank);
  for (let i = 0; i < rank; i++) {
    const da = i < rank - a.length ? 1 : a[i - (rank - a.length)];
    const db = i < rank - b.length ? 1 : b[i - (rank - b.length)];
    if (da === db || db === 1) out[i] = da;
    else if (da === 1) out[i] = db;
    else if (typeof da === 'number' && typeof db === 'number') {
      throw new RuntimeError(
        'GRAPH_SHAPE',
        `${where}: shapes [${a.join(', ')}] and [${b.join(', ')}] do not broadcast (dimension ${i}: ${da} vs ${db}).`,
        { a, b },
      );
    } else
      out[i] = typeof da === 'number' ? da : typeof db === 'number' ? db : isUnknown(da) ? db : da;
  }
  return out;
}

/** Normalizes a possibly negative axis against a rank, with a clear error when out of range. */
export function normAxis(axis: number, rank: number, where: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) {
    throw new RuntimeError(
      'GRAPH_SHAPE',
      `${where}: axis ${axis} is out of range for rank ${rank}.`,
      { axis, rank },
    );
  }
  return a;
}

/** Product of dims when all are numbers, else undefined. */
export function knownSize(dims: readonly Dim[]): number | undefined {
  let n = 1;
  for (const d of dims) {
    if (typeof d !== 'number') return undefined;
    n *= d;
  }
  return n;
}
