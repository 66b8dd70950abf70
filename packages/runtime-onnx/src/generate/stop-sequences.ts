/**
 * Text-level stop sequences: a stop string may span several tokens, and streamed text must not
 * show the start of a stop string that is about to complete.
 */

/** The earliest index at which any stop string occurs in `text` at or after `from`, or -1. */
export function findStop(text: string, stops: readonly string[], from = 0): number {
  let earliest = -1;
  for (const stop of stops) {
    const i = text.indexOf(stop, from);
    if (i >= 0 && (earliest < 0 || i < earliest)) earliest = i;
  }
  return earliest;
}

/**
 * How many characters at the end of `text` must be held back from the stream because they
 * are the beginning of some stop string (the longest such suffix; 0 if none).
 */
export function stopHoldback(text: string, stops: readonly string[]): number {
  let hold = 0;
  for (const stop of stops) {
    for (let k = Math.min(stop.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(stop.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}
