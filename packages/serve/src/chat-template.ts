import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { readJsonFile } from '@lora/core';
import { ServeError } from './errors.js';

/** One chat message as the OpenAI API sends it. */
export interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

/**
 * A model folder's chat template (Hugging Face: `chat_template` of `tokenizer_config.json`, or
 * `chat_template.jinja`), rendered with @huggingface/jinja the way `apply_chat_template` does:
 * `messages`, `bos_token`, `eos_token` and `add_generation_prompt: true`.
 */
export class ChatTemplate {
  readonly #template: Template;
  readonly #specials: Record<string, string>;

  private constructor(source: string, specials: Record<string, string>, where: string) {
    try {
      this.#template = new Template(source);
    } catch (e) {
      throw new ServeError(
        500,
        'CHAT_TEMPLATE_INVALID',
        `${where}: the chat template does not parse (${(e as Error).message}).`,
        { path: where },
      );
    }
    this.#specials = specials;
  }

  /** The template of a model folder, or undefined when it has none. */
  static async fromFolder(dir: string): Promise<ChatTemplate | undefined> {
    const configPath = join(dir, 'tokenizer_config.json');
    let config: Record<string, unknown> = {};
    if (existsSync(configPath)) {
      config = ((await readJsonFile(configPath)) ?? {}) as Record<string, unknown>;
    }
    const specials: Record<string, string> = {};
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const v = config[key];
      const text = typeof v === 'string' ? v : (v as { content?: unknown } | null)?.content;
      if (typeof text === 'string') specials[key] = text;
    }
    const jinjaPath = join(dir, 'chat_template.jinja');
    if (existsSync(jinjaPath)) {
      return new ChatTemplate(await readFile(jinjaPath, 'utf8'), specials, jinjaPath);
    }
    let source = config.chat_template;
    // A list of named templates: the one named "default".
    if (Array.isArray(source)) {
      source = (source as { name?: unknown; template?: unknown }[]).find(
        (t) => t?.name === 'default',
      )?.template;
    }
    return typeof source === 'string' ? new ChatTemplate(source, specials, configPath) : undefined;
  }

  /** The prompt text for `messages`, ending where the assistant's answer starts. */
  render(messages: readonly ChatMessage[]): string {
    try {
      return this.#template.render({
        ...this.#specials,
        messages,
        add_generation_prompt: true,
      });
    } catch (e) {
      throw new ServeError(
        400,
        'CHAT_TEMPLATE_FAILED',
        `The model's chat template rejected these messages: ${(e as Error).message}`,
      );
    }
  }
}
