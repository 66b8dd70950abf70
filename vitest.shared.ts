import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// One vitest configuration for every package: workspace imports resolve to their TypeScript
// sources (no build needed to test), and CI asks for a JSON report to count passes and failures.
const root = fileURLToPath(new URL('.', import.meta.url));
const src = (pkg: string, entry = 'index') => `${root}packages/${pkg}/src/${entry}.ts`;

export function loraVitestConfig(name: string) {
  const reportDir = process.env.LORA_TEST_REPORT_DIR;
  return defineConfig({
    resolve: {
      alias: {
        // subpath entries first: the first matching alias wins
        '@lora/core/internal': src('core', 'internal'),
        '@lora/quant/internal': src('quant', 'internal'),
        '@lora/adapters/internal': src('adapters', 'internal'),
        '@lora/runtime-onnx/internal': src('runtime-onnx', 'internal'),
        '@lora/core': src('core'),
        '@lora/quant': src('quant'),
        '@lora/adapters': src('adapters'),
        '@lora/runtime-onnx': src('runtime-onnx'),
        '@lora/train': src('train'),
        '@lora/serve': src('serve'),
      },
    },
    test: {
      name,
      include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
      testTimeout: 60_000,
      hookTimeout: 120_000,
      pool: 'forks',
      reporters: reportDir
        ? ['default', ['json', { outputFile: `${reportDir}/${name.replace('/', '__')}.json` }]]
        : ['default'],
    },
  });
}
