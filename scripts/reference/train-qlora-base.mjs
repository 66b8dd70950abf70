// Helper of scripts/reference/train-trajectory.py (run by it; needs the packages built):
// reads <dir>/model/model.safetensors and writes <dir>/dequantized.safetensors, where every decoder
// linear weight is @lora/quant's nf4 + double-quant (block 64) round trip, bitsandbytes-exact, and
// every other tensor is copied. PyTorch trains on these float weights as the QLoRA reference.
import { join } from 'node:path';

// The built packages, by path (this script sits outside the workspace packages).
const pkg = (name) => new URL(`../../packages/${name}/dist/index.js`, import.meta.url).href;
const { SafetensorsFile, writeSafetensors } = await import(pkg('core'));
const { dequantizeBnb4, quantizeBnb4 } = await import(pkg('quant'));

const dir = process.argv[2];
const file = await SafetensorsFile.open(join(dir, 'model', 'model.safetensors'));
const out = new Map();
for (const name of file.names()) {
  const t = await file.read(name);
  const linear = /^model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+_proj\.weight$/.test(name);
  if (!linear) {
    out.set(name, t);
    continue;
  }
  const q = quantizeBnb4(t.data, t.shape, {
    format: 'nf4',
    blockSize: 64,
    doubleQuant: true,
    name,
  });
  out.set(name, { dtype: 'f32', shape: t.shape, data: dequantizeBnb4(q) });
}
await file.close();
await writeSafetensors(join(dir, 'dequantized.safetensors'), out);
console.log(`wrote ${join(dir, 'dequantized.safetensors')}`);
