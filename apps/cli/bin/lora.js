#!/usr/bin/env node
// onnxruntime-node's telemetry runs a regex over the process command line that overflows the
// native stack on long arguments (SIGSEGV with a ~34 KB prompt); it must be off before
// onnxruntime loads, hence before main.js (which imports it) is evaluated.
process.env.ORT_DISABLE_TELEMETRY ??= '1';
const { installSignalCleanup, run } = await import('../dist/main.js');
installSignalCleanup();
process.exitCode = await run(process.argv.slice(2));
