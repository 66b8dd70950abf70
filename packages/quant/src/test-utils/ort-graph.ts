import { onnx } from 'onnx-proto';
import * as ort from 'onnxruntime-node';

/** An initializer for a one-node test graph. */
export interface Init {
  name: string;
  type: 'float' | 'uint8';
  dims: number[];
  data: Float32Array | Uint8Array;
}

/**
 * Builds and runs a one-node model `Y = op(A, initializers...)` with domain `com.microsoft`,
 * feeding A float32 `[M, K]`, and returns Y as float32.
 */
export async function runContribOp(options: {
  op: string;
  inputs: string[];
  initializers: Init[];
  attributes: Record<string, number>;
  A: Float32Array;
  M: number;
  K: number;
  N: number;
}): Promise<Float32Array> {
  const { op, inputs, initializers, attributes, A, M, K, N } = options;
  const node = onnx.NodeProto.create({
    opType: op,
    domain: 'com.microsoft',
    input: inputs,
    output: ['Y'],
    attribute: Object.entries(attributes).map(([name, i]) =>
      onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INT, i }),
    ),
  });
  const tensorType = (elemType: number, dims: number[]) =>
    onnx.TypeProto.create({
      tensorType: { elemType, shape: { dim: dims.map((d) => ({ dimValue: d })) } },
    });
  const graph = onnx.GraphProto.create({
    name: 'one_node',
    node: [node],
    initializer: initializers.map((t) =>
      onnx.TensorProto.create({
        name: t.name,
        dims: t.dims,
        dataType:
          t.type === 'float' ? onnx.TensorProto.DataType.FLOAT : onnx.TensorProto.DataType.UINT8,
        rawData: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
      }),
    ),
    input: [
      onnx.ValueInfoProto.create({
        name: 'A',
        type: tensorType(onnx.TensorProto.DataType.FLOAT, [M, K]),
      }),
    ],
    output: [
      onnx.ValueInfoProto.create({
        name: 'Y',
        type: tensorType(onnx.TensorProto.DataType.FLOAT, [M, N]),
      }),
    ],
  });
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: '@lora/quant tests',
    opsetImport: [
      { domain: '', version: 17 },
      { domain: 'com.microsoft', version: 1 },
    ],
    graph,
  });
  const bytes = onnx.ModelProto.encode(model).finish();
  const session = await ort.InferenceSession.create(bytes, {
    intraOpNumThreads: 1,
    graphOptimizationLevel: 'disabled',
  });
  try {
    const out = await session.run({ A: new ort.Tensor('float32', A, [M, K]) });
    return out.Y.data as Float32Array;
  } finally {
    await session.release();
  }
}

/** Float64 reference: Y[m, n] = sum_k A[m, k] * W[n, k]. */
export function matmulTransposedF64(
  A: Float32Array,
  W: Float32Array,
  M: number,
  K: number,
  N: number,
): Float64Array {
  const Y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[m * K + k] * W[n * K + k];
      Y[m * N + n] = s;
    }
  return Y;
}
