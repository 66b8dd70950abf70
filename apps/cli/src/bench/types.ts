/** One section of `lora bench`: a self-contained measurement reported as a table. */
export interface BenchSection {
  /** Short id used by `lora bench --only <name>`. */
  readonly name: string;
  readonly title: string;
  run(ctx: BenchContext): Promise<BenchTable>;
}

export interface BenchContext {
  /** Smaller sizes and fewer repeats (`--quick`), for smoke runs. */
  readonly quick: boolean;
  /** Progress lines on stderr. */
  log(message: string): void;
}

export interface BenchTable {
  readonly columns: readonly string[];
  readonly rows: readonly (readonly (string | number)[])[];
  /** Goals met or missed, assumptions, the measured ratios in words. */
  readonly notes?: readonly string[];
}

/** A section's table plus the peak RSS of the process that ran it. */
export interface BenchReport extends BenchTable {
  readonly name: string;
  readonly title: string;
  readonly peakRssBytes: number;
  readonly seconds: number;
}
