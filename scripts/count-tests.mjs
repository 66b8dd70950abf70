// Sums vitest JSON reports into the closing line CI reads: "N passed, N failed".
// Usage: node scripts/count-tests.mjs <report-dir> <failed-gates> <test-exit-status>
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, gatesArg = '0', statusArg = '0'] = process.argv.slice(2);
let passed = 0;
let failed = Number(gatesArg);
let skipped = 0;
let reports = 0;
for (const name of readdirSync(dir).filter((n) => n.endsWith('.json'))) {
  const r = JSON.parse(readFileSync(join(dir, name), 'utf8'));
  reports++;
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  // A file that failed to load has no tests but a failed suite.
  failed += (r.testResults ?? []).filter(
    (f) => f.status === 'failed' && (f.assertionResults ?? []).length === 0,
  ).length;
}
const status = Number(statusArg);
if (status !== 0 && failed === 0) {
  console.log(
    `the test command exited with ${status} without a failed test in the reports (a package crashed?)`,
  );
  failed = 1;
}
console.log(`${reports} test reports read`);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 ? 1 : 0);
