import { DTYPES, type DType, type TypedArrayOf } from '../dtype.js';
import { type Tensor, tensor } from '../tensor.js';
import { matrixShape } from './matrix.js';

// Tiles of 32 x 32 elements keep both the read rows and the written rows in L1.
const TILE = 32;

/**
 * The transpose of a 2-D tensor of any dtype: `[rows, cols]` -> `[cols, rows]`, as a new
 * tensor (the input is never modified). Works tile by tile so both sides stay in cache.
 */
export function transpose<D extends DType>(t: Tensor<D>): Tensor<D> {
  const [rows, cols] = matrixShape(t, 'transpose');
  const src = t.data as unknown as Record<number, number | bigint>;
  const out = DTYPES[t.dtype].create(rows * cols) as TypedArrayOf[D];
  const dst = out as unknown as Record<number, number | bigint>;
  // src: [rows, cols], dst: [cols, rows]
  for (let i0 = 0; i0 < rows; i0 += TILE) {
    const i1 = Math.min(i0 + TILE, rows);
    for (let j0 = 0; j0 < cols; j0 += TILE) {
      const j1 = Math.min(j0 + TILE, cols);
      for (let i = i0; i < i1; i++) {
        const rowOffset = i * cols;
        for (let j = j0; j < j1; j++) dst[j * rows + i] = src[rowOffset + j];
      }
    }
  }
  return tensor(t.dtype, [cols, rows], out);
}
