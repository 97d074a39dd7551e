import {
  BATCH_CONTENT_TYPE,
  BATCH_PATH,
  decodeBatchResponse,
  encodeBatchRequest,
  MAX_BATCH_ITEMS,
  SEND_ALONE,
} from "@kiln/protocol/cache";
import { isResendable, type CacheRequest, type WholeResponse } from "./cache-request.js";

/** Requests with bodies up to this size are batched; larger ones gain nothing from it. */
const MAX_BATCHED_BODY_BYTES = 64 * 1024;
// Stays well under the server's MAX_BATCH_REQUEST_BYTES, codec framing included.
const MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024;
// Splitting a turn's requests finer than this would, in a closed loop, shrink every later turn's
// batch too until requests went one by one again.
const MIN_PER_BATCH = 16;
// Two batches keep both ends busy (the server works on one while the client reads the other); more
// only add requests to parse and syscalls. Measured with bench:cache against one batch per pooled
// connection (4): fewer, larger batches gave more puts and gets per second on both backends.
const BATCHES_PER_TURN = 2;

interface Queued {
  spec: CacheRequest;
  resolve(res: WholeResponse): void;
  reject(err: unknown): void;
}

/**
 * Gathers the small cache requests made in one event-loop turn into one
 * `POST /v1/batch` (see batch-format.ts); a turn with a single request sends
 * it as it is, so a lone call pays nothing. Each caller gets the response
 * its request would have had alone.
 *
 * @example
 * const batcher = new RequestBatcher((spec) => sendOverHttp(spec));
 * const [a, b] = await Promise.all([batcher.send(getA), batcher.send(getB)]); // one round trip
 */
export class RequestBatcher {
  private queue: Queued[] = [];

  constructor(private readonly sendOne: (spec: CacheRequest) => Promise<WholeResponse>) {}

  static accepts(spec: CacheRequest): boolean {
    return (spec.body?.byteLength ?? 0) <= MAX_BATCHED_BODY_BYTES;
  }

  send(spec: CacheRequest): Promise<WholeResponse> {
    return new Promise((resolve, reject) => {
      if (this.queue.length === 0) setImmediate(() => this.flush());
      this.queue.push({ spec, resolve, reject });
    });
  }

  private flush(): void {
    const queue = this.queue;
    this.queue = [];
    const perBatch = Math.min(MAX_BATCH_ITEMS, Math.max(MIN_PER_BATCH, Math.ceil(queue.length / BATCHES_PER_TURN)));
    let start = 0;
    let bytes = 0;
    for (let i = 0; i < queue.length; i++) {
      const size = queue[i]!.spec.body?.byteLength ?? 0;
      if (i > start && (i - start === perBatch || bytes + size > MAX_BATCH_BODY_BYTES)) {
        void this.sendBatch(queue.slice(start, i));
        start = i;
        bytes = 0;
      }
      bytes += size;
    }
    void this.sendBatch(queue.slice(start));
  }

  private async sendBatch(items: Queued[]): Promise<void> {
    if (items.length === 1) return this.sendOne(items[0]!.spec).then(items[0]!.resolve, items[0]!.reject);
    try {
      const reply = await this.sendOne({
        method: "POST",
        path: BATCH_PATH,
        headers: { "content-type": BATCH_CONTENT_TYPE },
        // A batch of reads may go again if its connection dies, as each read alone would.
        resendable: items.every(({ spec }) => isResendable(spec)),
        body: encodeBatchRequest(items.map(({ spec }) => spec)),
      });
      // The batch as a whole was refused (a bad token, say): every request gets that answer.
      if (reply.status !== 200) {
        for (const item of items) item.resolve(reply);
        return;
      }
      const answers = decodeBatchResponse(reply.body, items.length);
      answers.forEach((answer, i) => {
        const item = items[i]!;
        if (answer.status === SEND_ALONE) this.sendOne(item.spec).then(item.resolve, item.reject);
        else
          item.resolve({
            status: answer.status,
            headers: answer.headers,
            body: Buffer.from(answer.body.buffer, answer.body.byteOffset, answer.body.byteLength),
          });
      });
    } catch (err) {
      for (const item of items) item.reject(err);
    }
  }
}
