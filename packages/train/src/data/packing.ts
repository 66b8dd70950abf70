import type { Example } from './example.js';

/**
 * Packs examples the way transformers' `run_clm.py` (`group_texts`) does: the rows are
 * concatenated in order (each keeps its own BOS/EOS and labels) and the stream is cut into
 * sequences of exactly `seqLen` tokens. Attention is NOT blocked at row boundaries: a token sees
 * the earlier rows of its packed sequence (causal attention over the whole sequence, positions
 * counting from the sequence start), and the first token of a row is predicted from the end of
 * the previous one. Unlike `group_texts`, the last, shorter sequence is kept (no token is
 * dropped). Labels of -100 stay ignored.
 */
export function packExamples(examples: readonly Example[], seqLen: number): Example[] {
  let total = 0;
  for (const e of examples) total += e.inputIds.length;
  const ids = new Int32Array(total);
  const labels = new Int32Array(total);
  let at = 0;
  for (const e of examples) {
    ids.set(e.inputIds, at);
    labels.set(e.labels, at);
    at += e.inputIds.length;
  }
  const out: Example[] = [];
  for (let start = 0; start < total; start += seqLen) {
    const end = Math.min(start + seqLen, total);
    out.push({ inputIds: ids.slice(start, end), labels: labels.slice(start, end) });
  }
  return out;
}
