import type { Adapter } from '@lora/adapters';
import type { Tensor } from '@lora/core';
import {
  type BaseQuantOptions,
  createLoraHook,
  type Device,
  type LlamaConfig,
  LlamaModel,
  LoraSlots,
  type TokenStepper,
  type WeightSource,
} from '@lora/runtime-onnx';

/**
 * A model to evaluate: the runtime's inference graph (logits for every position), with an
 * adapter as LoRA branches whose A and B are feeds (so an adapter being trained is evaluated
 * with its current values without rebuilding the session).
 */
export interface EvalModel {
  readonly config: LlamaConfig;
  /** Logits [rows, T, vocab] for right-padded rows. */
  logits(inputIds: number[][], attentionMask: number[][]): Promise<Tensor<'f32'>>;
  /** A generation state (KV cache) for greedy completions. */
  stepper(rows: number): TokenStepper;
  /** Replace the adapter's weights (same modules and ranks). */
  setAdapter(adapter: Adapter): void;
  release(): Promise<void>;
}

export interface EvalModelOptions {
  readonly config: LlamaConfig;
  readonly source: WeightSource;
  /** The adapter to evaluate with (its modules decide the branches). */
  readonly adapter?: Adapter;
  readonly quant?: BaseQuantOptions;
  readonly device?: Device;
  readonly warn?: (message: string) => void;
}

/** Opens an {@link EvalModel} (builds its session once). */
export async function openEvalModel(options: EvalModelOptions): Promise<EvalModel> {
  const { adapter } = options;
  let slots: LoraSlots | undefined;
  let model: LlamaModel;
  if (adapter) {
    const targets = new Set(adapter.modules.keys());
    const rank = Math.max(...[...adapter.modules.values()].map((m) => m.A.shape[0]));
    const { hook, plan } = createLoraHook({ targets: (m) => targets.has(m), slots: 2, rank });
    model = await LlamaModel.create(options.config, options.source, {
      linearHook: hook,
      quant: options.quant,
      device: options.device,
      warn: options.warn,
    });
    slots = new LoraSlots(plan);
    slots.assign(1, [{ adapter }]);
  } else {
    model = await LlamaModel.create(options.config, options.source, {
      quant: options.quant,
      device: options.device,
      warn: options.warn,
    });
  }
  const feeds = (rows: number) => slots?.feeds(new Array<number>(rows).fill(1));
  return {
    config: options.config,
    async logits(inputIds, attentionMask) {
      const positionIds = attentionMask.map((m) => {
        let p = 0;
        return m.map((x) => (x ? p++ : 0));
      });
      const out = await model.forward({
        inputIds,
        attentionMask,
        positionIds,
        extraFeeds: feeds(inputIds.length),
      });
      return out.logits;
    },
    stepper: (rows) => model.stepper(feeds(rows)),
    setAdapter(next) {
      slots?.assign(1, [{ adapter: next }]);
    },
    release: () => model.release(),
  };
}
