/**
 * Evaluated before onnxruntime-node loads (imported first by session.ts): onnxruntime-node
 * 1.30's telemetry runs a regex over the process command line that overflows the native stack
 * when an argument is long (SIGSEGV, e.g. a 34 KB prompt on the command line). Telemetry is off
 * unless the user set the variable.
 */
process.env.ORT_DISABLE_TELEMETRY ??= '1';
