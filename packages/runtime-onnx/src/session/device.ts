import { RuntimeError } from '../errors.js';

/** Where a model runs. `auto` tries CUDA when this onnxruntime-node build has it, else CPU. */
export type Device = 'cpu' | 'cuda' | 'auto';

export const DEVICES: readonly Device[] = ['cpu', 'cuda', 'auto'];

/** How users get a CUDA-enabled onnxruntime-node (the README says the same). */
export const CUDA_INSTALL_HINT =
  'reinstall onnxruntime-node with ONNXRUNTIME_NODE_INSTALL=cuda12 and its install script allowed ' +
  '(pnpm: allowBuilds: { onnxruntime-node: true }), with the CUDA 12 and cuDNN 9 libraries on the library path';

export function parseDevice(value: string): Device {
  if ((DEVICES as readonly string[]).includes(value)) return value as Device;
  throw new RuntimeError('DEVICE_INVALID', `Unknown device "${value}": use cpu, cuda or auto.`, {
    device: value,
  });
}

/** The providers to try, in order, for a device and the backends this build lists. */
export function providerPlan(
  device: Device,
  backends: readonly { name: string }[],
): ('cuda' | 'cpu')[] {
  const hasCuda = backends.some((b) => b.name === 'cuda');
  if (device === 'cpu') return ['cpu'];
  if (device === 'cuda') {
    if (!hasCuda) {
      throw new RuntimeError(
        'DEVICE_UNAVAILABLE',
        `CUDA was requested but this onnxruntime-node build has no CUDA provider: ${CUDA_INSTALL_HINT}, or use --device cpu.`,
        { device, backends: backends.map((b) => b.name) },
      );
    }
    return ['cuda'];
  }
  return hasCuda ? ['cuda', 'cpu'] : ['cpu'];
}

/** One sentence for a CUDA session that failed to start, from onnxruntime's (long) message. */
export function explainCudaFailure(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const firstLine = text.split('\n')[0].slice(0, 200);
  // The last library named is the one that was missing (the provider library is named first).
  const missingLib = text.match(/lib[\w+-]+\.so[\w.]*/g)?.at(-1);
  const what = missingLib
    ? `a CUDA library could not be loaded (${missingLib})`
    : `it failed: ${firstLine}`;
  return `The CUDA execution provider did not start because ${what}; ${CUDA_INSTALL_HINT}`;
}
