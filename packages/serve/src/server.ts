import { randomUUID, timingSafeEqual } from 'node:crypto';
import { isLoraError } from '@lora/core';
import type { RowEvent } from '@lora/runtime-onnx';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { ServeError } from './errors.js';
import {
  type CompletionChoice,
  type CompletionParams,
  CompletionService,
  type CompletionServiceOptions,
} from './service.js';

/** Options of {@link startServer}: the service's, plus where to listen and the API key. */
export interface ServerOptions extends CompletionServiceOptions {
  /** Default 127.0.0.1 (loopback only). */
  readonly host?: string;
  /** Default 8080; 0 picks a free port. */
  readonly port?: number;
  /** When set, every endpoint except /health needs `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
}

/** A running server. */
export interface LoraServer {
  /** `http://host:port` */
  readonly url: string;
  readonly port: number;
  readonly service: CompletionService;
  readonly app: FastifyInstance;
  /**
   * Stops accepting requests (new ones get 503), lets in-flight requests finish for at most
   * `graceMs` (default 10 000), then closes connections and frees the model.
   */
  close(graceMs?: number): Promise<void>;
}

const MAX_STOPS = 4;
const MAX_ADAPTER_NAME = 128;

const adaptersSchema = {
  type: 'array',
  maxItems: 16,
  items: {
    type: 'object',
    required: ['name'],
    additionalProperties: false,
    properties: {
      name: { type: 'string', minLength: 1, maxLength: MAX_ADAPTER_NAME },
      scale: { type: 'number', minimum: -100, maximum: 100 },
    },
  },
} as const;

const samplingProperties = {
  model: { type: 'string', minLength: 1, maxLength: 256 },
  max_tokens: { type: ['integer', 'null'], minimum: 1 },
  max_completion_tokens: { type: ['integer', 'null'], minimum: 1 },
  temperature: { type: ['number', 'null'], minimum: 0, maximum: 2 },
  top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 1 },
  seed: { type: ['integer', 'null'], minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
  n: { type: ['integer', 'null'], minimum: 1, maximum: 1 },
  stream: { type: ['boolean', 'null'] },
  stream_options: { type: ['object', 'null'] },
  stop: {
    anyOf: [
      { type: 'string', minLength: 1, maxLength: 256 },
      {
        type: 'array',
        maxItems: MAX_STOPS,
        items: { type: 'string', minLength: 1, maxLength: 256 },
      },
      { type: 'null' },
    ],
  },
  adapters: adaptersSchema,
} as const;

const completionSchema = {
  type: 'object',
  required: ['model', 'prompt'],
  properties: {
    ...samplingProperties,
    prompt: {
      anyOf: [{ type: 'string' }, { type: 'array', minItems: 1, items: { type: 'string' } }],
    },
  },
} as const;

const chatSchema = {
  type: 'object',
  required: ['model', 'messages'],
  properties: {
    ...samplingProperties,
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 256,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { type: 'string', enum: ['system', 'user', 'assistant', 'developer'] },
          content: { type: 'string' },
        },
      },
    },
  },
} as const;

interface SamplingBody {
  model: string;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  stop?: string | string[] | null;
  adapters?: { name: string; scale?: number }[];
}

/**
 * Starts the OpenAI-compatible server: opens the model and adapters ({@link CompletionService})
 * and listens (127.0.0.1 unless `host` says otherwise).
 */
export async function startServer(options: ServerOptions): Promise<LoraServer> {
  const service = await CompletionService.open(options);
  try {
    const app = buildApp(service, options.apiKey);
    await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 8080 });
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : (options.port ?? 8080);
    const host = options.host ?? '127.0.0.1';
    const shownHost = host.includes(':') ? `[${host}]` : host;
    return {
      url: `http://${shownHost}:${port}`,
      port,
      service,
      app,
      close: (graceMs = 10_000) => closeServer(app, service, graceMs),
    };
  } catch (e) {
    await service.close();
    throw e;
  }
}

async function closeServer(
  app: FastifyInstance,
  service: CompletionService,
  graceMs: number,
): Promise<void> {
  service.draining = true;
  // Stop accepting connections at once; in-flight requests go on.
  const closing = app.close();
  // Keep-alive connections outlive their last response: close them as they become idle.
  const sweep = setInterval(() => app.server.closeIdleConnections(), 50);
  try {
    const idle = await service.whenIdle(graceMs);
    if (!idle) app.server.closeAllConnections();
    await closing;
  } finally {
    clearInterval(sweep);
  }
  await service.close();
}

/** The fastify app: routes, schemas, limits, API key, OpenAI-shaped errors. */
export function buildApp(service: CompletionService, apiKey?: string): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: service.limits.bodyBytes,
    // Validation is strict: no type coercion, nothing removed or defaulted behind the caller's back.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false } },
    forceCloseConnections: 'idle',
  });

  app.addHook('onRequest', async (request, reply) => {
    if (!apiKey || request.url === '/health') return;
    const given = request.headers.authorization ?? '';
    const expected = `Bearer ${apiKey}`;
    const ok =
      given.length === expected.length &&
      timingSafeEqual(Buffer.from(given), Buffer.from(expected));
    if (!ok) {
      return sendError(
        reply,
        new ServeError(
          401,
          'UNAUTHORIZED',
          'Missing or wrong API key: send Authorization: Bearer <key>.',
        ),
      );
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    service.metrics.requests.inc({
      endpoint: request.routeOptions.url ?? 'unknown',
      status: String(reply.statusCode),
    });
  });

  app.setErrorHandler((error, _request, reply) => sendError(reply, toServeError(error)));
  app.setNotFoundHandler((request, reply) =>
    sendError(
      reply,
      new ServeError(404, 'NOT_FOUND', `No route ${request.method} ${request.url.split('?')[0]}.`),
    ),
  );

  app.get('/health', async () => ({ status: service.draining ? 'draining' : 'ok' }));

  app.get('/metrics', async (_request, reply) => {
    reply.type('text/plain; version=0.0.4; charset=utf-8');
    return service.metrics.text();
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: service.models().map((m) => ({
      id: m.id,
      object: 'model',
      created: 0,
      owned_by: m.kind === 'base' ? 'lora' : 'adapter',
      loaded: m.loaded,
    })),
  }));

  app.post(
    '/v1/adapters',
    {
      schema: {
        body: {
          type: 'object',
          required: ['name'],
          properties: {
            name: { type: 'string', minLength: 1, maxLength: MAX_ADAPTER_NAME },
            pin: { type: 'boolean' },
          },
        },
      },
    },
    async (request) => {
      const { name, pin } = request.body as { name: string; pin?: boolean };
      await service.loadAdapter(name, { pin });
      return { id: name, object: 'adapter', loaded: true, pinned: pin ?? false };
    },
  );

  app.delete('/v1/adapters/:name', async (request) => {
    const { name } = request.params as { name: string };
    service.unloadAdapter(name);
    return { id: name, object: 'adapter', deleted: true };
  });

  app.post('/v1/completions', { schema: { body: completionSchema } }, async (request, reply) => {
    const body = request.body as SamplingBody & { prompt: string | string[] };
    const prompts = typeof body.prompt === 'string' ? [body.prompt] : body.prompt;
    return respond(service, reply, 'text_completion', body, { prompts });
  });

  app.post('/v1/chat/completions', { schema: { body: chatSchema } }, async (request, reply) => {
    const body = request.body as SamplingBody & { messages: { role: string; content: string }[] };
    if (!service.hasChatTemplate) {
      throw new ServeError(
        400,
        'NO_CHAT_TEMPLATE',
        `Model "${service.modelId}" has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja): use /v1/completions.`,
        { param: 'messages' },
      );
    }
    return respond(service, reply, 'chat.completion', body, {
      messages: body.messages.map((m) => ({ role: m.role, content: m.content })),
    });
  });

  return app;
}

/** Runs a completion or chat request and answers in JSON or as server-sent events. */
async function respond(
  service: CompletionService,
  reply: FastifyReply,
  object: 'text_completion' | 'chat.completion',
  body: SamplingBody,
  input: Pick<CompletionParams, 'prompts' | 'messages'>,
): Promise<unknown> {
  const started = performance.now();
  const endpoint = object === 'chat.completion' ? '/v1/chat/completions' : '/v1/completions';
  const params: CompletionParams = {
    ...input,
    model: body.model,
    maxTokens: body.max_tokens ?? body.max_completion_tokens ?? undefined,
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    seed: body.seed ?? undefined,
    stop: typeof body.stop === 'string' ? [body.stop] : (body.stop ?? undefined),
    adapters: body.adapters,
  };
  const id = `${object === 'chat.completion' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const chat = object === 'chat.completion';
  const abort = new AbortController();

  if (!body.stream) {
    reply.raw.on('close', () => {
      if (!reply.sent) abort.abort();
    });
    const choices = await service.complete(params, undefined, abort.signal);
    service.metrics.requestSeconds.observe({ endpoint }, (performance.now() - started) / 1000);
    return {
      id,
      object,
      created,
      model: body.model,
      choices: choices.map((c) =>
        chat
          ? {
              index: c.index,
              message: { role: 'assistant', content: c.text },
              logprobs: null,
              finish_reason: c.finishReason,
            }
          : { index: c.index, text: c.text, logprobs: null, finish_reason: c.finishReason },
      ),
      usage: usage(choices),
    };
  }

  // Streaming: headers go out with the first token, so errors before it (limits, adapters)
  // are still plain JSON errors with their status.
  const chunkType = chat ? 'chat.completion.chunk' : 'text_completion';
  let opened = false;
  const write = (data: unknown) => {
    if (abort.signal.aborted) return; // the client went away
    if (!opened) {
      opened = true;
      reply.hijack();
      reply.raw.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        connection: 'keep-alive',
      });
      if (chat)
        write(chatChunk(id, created, body.model, 0, { role: 'assistant', content: '' }, null));
    }
    reply.raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  reply.raw.on('close', () => abort.abort());
  const onEvent = (index: number, event: RowEvent) => {
    if (abort.signal.aborted) return;
    const finish = event.finishReason
      ? event.finishReason === 'length'
        ? 'length'
        : 'stop'
      : null;
    if (event.text === '' && !finish) return;
    write(
      chat
        ? chatChunk(
            id,
            created,
            body.model,
            index,
            event.text ? { content: event.text } : {},
            finish,
          )
        : {
            id,
            object: chunkType,
            created,
            model: body.model,
            choices: [{ index, text: event.text, logprobs: null, finish_reason: finish }],
          },
    );
  };
  let choices: CompletionChoice[];
  try {
    choices = await service.complete(params, onEvent, abort.signal);
  } catch (e) {
    if (!opened) throw e;
    // Headers are out: report in the stream, as OpenAI does.
    write({ error: errorBody(toServeError(e)).error });
    reply.raw.end();
    return reply;
  }
  service.metrics.requestSeconds.observe({ endpoint }, (performance.now() - started) / 1000);
  if (!opened) write(''); // nothing streamed (cannot happen: every row has a last event)
  if (body.stream_options?.include_usage) {
    write({
      id,
      object: chunkType,
      created,
      model: body.model,
      choices: [],
      usage: usage(choices),
    });
  }
  write('[DONE]');
  if (!reply.raw.destroyed) reply.raw.end();
  return reply;
}

function chatChunk(
  id: string,
  created: number,
  model: string,
  index: number,
  delta: Record<string, string>,
  finish: string | null,
) {
  return {
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index, delta, logprobs: null, finish_reason: finish }],
  };
}

function usage(choices: readonly CompletionChoice[]) {
  const prompt = choices.reduce((s, c) => s + c.promptTokens, 0);
  const completion = choices.reduce((s, c) => s + c.completionTokens, 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
  };
}

/** Any error as a ServeError with an HTTP status (fastify's own errors keep theirs). */
function toServeError(error: unknown): ServeError {
  if (error instanceof ServeError) return error;
  const e = error as Error & { statusCode?: number; code?: string; validation?: unknown };
  if (e?.validation) {
    return new ServeError(400, 'INVALID_REQUEST', `Invalid request: ${e.message}.`);
  }
  if (e?.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return new ServeError(
      413,
      'LIMIT_BODY_BYTES',
      `${e.message} (the limit is set by the server).`,
    );
  }
  if (e?.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return new ServeError(415, 'UNSUPPORTED_MEDIA_TYPE', `${e.message}: send application/json.`);
  }
  if (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new ServeError(e.statusCode, e.code ?? 'BAD_REQUEST', e.message);
  }
  if (isLoraError(error)) return new ServeError(400, error.code, error.message);
  return new ServeError(500, 'INTERNAL', `Internal error: ${e?.message ?? String(error)}`);
}

/** OpenAI's error body: `{ error: { message, type, param, code } }`. */
function errorBody(e: ServeError) {
  const type =
    e.status === 401
      ? 'authentication_error'
      : e.status === 429
        ? 'rate_limit_error'
        : e.status >= 500
          ? 'server_error'
          : 'invalid_request_error';
  const param = typeof e.details.param === 'string' ? e.details.param : null;
  return { error: { message: e.message, type, param, code: e.code } };
}

function sendError(reply: FastifyReply, e: ServeError): FastifyReply {
  if (e.status === 429 || e.status === 503) reply.header('retry-after', '1');
  return reply.code(e.status).send(errorBody(e));
}
