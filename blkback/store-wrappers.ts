/**
 * Stores for experiments, each a {@link StorageBackend} around an inner one:
 * - {@link ErrorStore}: answers a chosen fraction of reads and writes with
 *   `BLKIF_RSP_ERROR`, picked by a seeded pseudo-random sequence, so a run is
 *   reproducible;
 * - {@link LatencyStore}: completes every request a fixed number of microseconds
 *   late, asynchronously;
 * - {@link TraceStore}: appends one JSON line per request to a file when it
 *   completes (time, domid, op, sector, sectors, latency, status).
 *
 * They stack (open-store.ts builds inner → error → latency → trace, so the trace
 * records the latency the guest sees). A wrapper passes through what describes
 * the disk (`sizeBytes`, `readOnly`, `canFlush`, `canDiscard`, `discardZeroes`,
 * `discardGranularity`, `resize`), takes over the inner store's completion handler,
 * and serves inner stores that answer synchronously and ones that answer
 * `STORAGE_PENDING` and complete later by id, in any order. Request ids pass
 * through unchanged. Each wrapper keeps its own {@link StorageCounters} of what its
 * caller sees (an injected error counts there, not in the inner store's).
 * `close()` closes the inner store, waits for the wrapper's own pending
 * completions, then releases what the wrapper holds.
 *
 * {@link StoreWrapper} is exported for writing more wrappers.
 */

import { mkdirSync, openSync, createWriteStream, type WriteStream } from 'node:fs';
import { dirname } from 'node:path';
import { finished } from 'node:stream/promises';
import { InvariantError } from '../rings/errors.ts';
import {
  countStorageCompletion, countStorageSubmit, newStorageCounters, SECTOR_SIZE, STORAGE_ERROR, STORAGE_PENDING,
  StorageError, storageRequestBytes,
  type StorageBackend, type StorageCompletionHandler, type StorageCounters, type StorageRequest,
  type StorageStatus, type StorageSubmitResult,
} from './storage.ts';

/** A request the wrapper answered `STORAGE_PENDING` and has not completed. */
interface Pending {
  readonly req: StorageRequest;
  /** `performance.now()` at submit, in ms. */
  readonly t0: number;
}

/**
 * The plumbing every wrapper shares: pass-through of the disk's description,
 * counting, the pending table (by request id) and `close()`. A subclass changes
 * what it needs through the protected hooks:
 * - {@link StoreWrapper.forward}: how a request is handled (default: `inner.submit`);
 * - {@link StoreWrapper.innerCompleted}: what happens when the inner store completes
 *   a pending request (default: complete it at once);
 * - {@link StoreWrapper.completed}: called once per request with its final status;
 * - {@link StoreWrapper.closeOwn}: releases the wrapper's own resources at close.
 */
export abstract class StoreWrapper implements StorageBackend {
  /** The wrapped store. Its completion handler belongs to this wrapper. */
  readonly inner: StorageBackend;
  /** What this wrapper's caller sees: requests by op, bytes, errors (injected ones included). */
  readonly counters: StorageCounters = newStorageCounters();

  #done: StorageCompletionHandler | undefined;
  readonly #pending = new Map<number, Pending>();
  #closing = false;
  #closed: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  constructor(inner: StorageBackend) {
    this.inner = inner;
    inner.setCompletionHandler((id, status) => this.innerCompleted(id, status));
  }

  /** The inner store's size in bytes. */
  get sizeBytes(): number { return this.inner.sizeBytes; }
  /** The inner store's `readOnly`. */
  get readOnly(): boolean { return this.inner.readOnly; }
  /** The inner store's `canFlush`. */
  get canFlush(): boolean { return this.inner.canFlush; }
  /** The inner store's `canDiscard`. */
  get canDiscard(): boolean { return this.inner.canDiscard; }
  /** The inner store's `discardZeroes`. */
  get discardZeroes(): boolean { return this.inner.discardZeroes; }
  /** The inner store's `discardGranularity` (bytes). */
  get discardGranularity(): number { return this.inner.discardGranularity; }

  /** Resizes the inner store; rejects as it does (StorageError). */
  resize(sizeBytes: number): Promise<void> {
    return this.inner.resize(sizeBytes);
  }

  /** Sets the callback for requests answered `STORAGE_PENDING`. */
  setCompletionHandler(done: StorageCompletionHandler): void {
    this.#done = done;
  }

  /**
   * Counts `req`, hands it to {@link StoreWrapper.forward} and returns its answer.
   * After `close()` answers -1 without forwarding.
   * @throws {InvariantError} when `req.id` is already pending here, or a pending
   *   answer comes before `setCompletionHandler` (the caller's bugs).
   */
  submit(req: StorageRequest): StorageSubmitResult {
    countStorageSubmit(this.counters, req.op);
    if (this.#pending.has(req.id)) throw new InvariantError(`${this.constructor.name}: request id ${req.id} is already in flight`);
    const t0 = performance.now();
    const status = this.#closing ? STORAGE_ERROR : this.forward(req);
    if (status !== STORAGE_PENDING) {
      this.#settle(req, status, t0);
      return status;
    }
    if (this.#done === undefined) throw new InvariantError(`${this.constructor.name}: pending answer before setCompletionHandler`);
    this.#pending.set(req.id, { req, t0 });
    return STORAGE_PENDING;
  }

  /** Handles a request; returns its status or `STORAGE_PENDING`. Default: the inner store's answer. */
  protected forward(req: StorageRequest): StorageSubmitResult {
    return this.inner.submit(req);
  }

  /** The inner store completed pending request `id`. Default: {@link StoreWrapper.complete} at once. */
  protected innerCompleted(id: number, status: StorageStatus): void {
    this.complete(id, status);
  }

  /**
   * Completes pending request `id` towards the caller: counts, calls
   * {@link StoreWrapper.completed}, then the handler.
   * @throws {InvariantError} for an id that is not pending (the inner store's bug).
   */
  protected complete(id: number, status: StorageStatus): void {
    const p = this.#pending.get(id);
    if (p === undefined) throw new InvariantError(`${this.constructor.name}: completion of request ${id}, which is not pending`);
    this.#pending.delete(id);
    try {
      this.#settle(p.req, status, p.t0);
      this.#done!(id, status);
    } finally {
      if (this.#pending.size === 0 && this.#drained) this.#drained();
    }
  }

  #settle(req: StorageRequest, status: StorageStatus, t0: number): void {
    countStorageCompletion(this.counters, req, status);
    this.completed(req, status, t0);
  }

  /** Called once per request with its final status; `t0` is `performance.now()` at submit (ms). Default: nothing. */
  protected completed(_req: StorageRequest, _status: StorageStatus, _t0: number): void {}

  /** Releases the wrapper's own resources, after every pending request has completed. Default: nothing. */
  protected closeOwn(): Promise<void> | void {}

  /** Number of requests answered `STORAGE_PENDING` and not completed yet. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /**
   * Refuses new requests (-1), closes the inner store (which waits for its own
   * in-flight requests), waits until every request pending here has completed, then
   * calls {@link StoreWrapper.closeOwn}. Idempotent: every call returns the same promise.
   * @throws {StorageError} (as a rejection) from the inner store or `closeOwn`.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing = true;
      try {
        await this.inner.close();
      } finally {
        if (this.#pending.size > 0) await new Promise<void>((resolve) => { this.#drained = resolve; });
        await this.closeOwn();
      }
    })();
    return this.#closed;
  }
}

/** A StorageError for a wrapper option that is out of range. */
function badOption(what: string, message: string): StorageError {
  return new StorageError(`(${what})`, 'EINVAL', `cannot open ${what} store: EINVAL (${message})`);
}

/**
 * mulberry32: a 32-bit seeded pseudo-random generator; each call returns a number
 * in [0, 1). The same seed gives the same sequence on every machine.
 */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * Injects I/O errors: each read or write draws the next number of a mulberry32
 * sequence seeded with `seed`; when it is below `rate` the request is answered -1
 * (`BLKIF_RSP_ERROR`, what the guest sees) at once, without reaching the inner
 * store, and counted in {@link ErrorStore.injected}. Flushes and discards always
 * pass. The choice depends only on the seed and the order of reads and writes, so
 * a run is reproducible.
 */
export class ErrorStore extends StoreWrapper {
  /** Fraction 0..1 of reads and writes answered -1. */
  readonly rate: number;
  /** The sequence's seed (a u32). */
  readonly seed: number;
  readonly #next: () => number;
  #injected = 0;

  /**
   * @param rate fraction 0..1 of reads and writes to fail.
   * @param seed any integer; taken modulo 2^32. Default 1.
   * @throws {StorageError} (`EINVAL`) for a rate outside 0..1 or a seed that is not an integer.
   */
  constructor(inner: StorageBackend, rate: number, seed = 1) {
    if (!(rate >= 0 && rate <= 1)) throw badOption('error', `error rate ${rate} is not a fraction 0..1`);
    if (!Number.isSafeInteger(seed)) throw badOption('error', `error seed ${seed} is not an integer`);
    super(inner);
    this.rate = rate;
    this.seed = seed >>> 0;
    this.#next = mulberry32(this.seed);
  }

  /** Reads and writes answered -1 by this wrapper so far. */
  get injected(): number {
    return this.#injected;
  }

  protected override forward(req: StorageRequest): StorageSubmitResult {
    if ((req.op === 'read' || req.op === 'write') && this.#next() < this.rate) {
      this.#injected++;
      return STORAGE_ERROR;
    }
    return this.inner.submit(req);
  }
}

/** A request whose status is known, waiting for its time. */
interface Delayed {
  readonly id: number;
  readonly status: StorageStatus;
  /** `performance.now()` (ms) at which to complete it. */
  readonly due: number;
}

/**
 * Adds latency: every request is answered `STORAGE_PENDING` and completes through
 * the handler `latencyUs` microseconds after the inner store answered it (at once
 * or through its own handler). Completions keep the order in which the inner store
 * answered. Timing: a timer sleeps the whole milliseconds, then `setImmediate` turns
 * (the event loop keeps running; no thread blocks) cover the rest, so a completion
 * is never early and usually late by a few microseconds.
 */
export class LatencyStore extends StoreWrapper {
  /** Added latency in microseconds. */
  readonly latencyUs: number;
  /** Due completions in due order (the latency is constant, so that is arrival order). */
  readonly #queue: Delayed[] = [];
  #armed = false;

  /**
   * @param latencyUs microseconds (a finite number ≥ 0) added to every request.
   * @throws {StorageError} (`EINVAL`) for a latency that is not one.
   */
  constructor(inner: StorageBackend, latencyUs: number) {
    if (!(Number.isFinite(latencyUs) && latencyUs >= 0)) throw badOption('latency', `latency ${latencyUs} µs is not a delay`);
    super(inner);
    this.latencyUs = latencyUs;
  }

  protected override forward(req: StorageRequest): StorageSubmitResult {
    const status = this.inner.submit(req);
    if (status !== STORAGE_PENDING) this.#delay(req.id, status);
    return STORAGE_PENDING;
  }

  protected override innerCompleted(id: number, status: StorageStatus): void {
    this.#delay(id, status);
  }

  #delay(id: number, status: StorageStatus): void {
    this.#queue.push({ id, status, due: performance.now() + this.latencyUs / 1000 });
    this.#arm();
  }

  /** Schedules {@link LatencyStore.#pump} for the head of the queue, unless it is scheduled already. */
  #arm(): void {
    if (this.#armed || this.#queue.length === 0) return;
    this.#armed = true;
    const wait = this.#queue[0]!.due - performance.now();
    if (wait >= 1) setTimeout(this.#pump, Math.floor(wait));
    else setImmediate(this.#pump);
  }

  /** Completes every due request, then re-arms for the next (also when a handler throws). */
  readonly #pump = (): void => {
    this.#armed = false;
    try {
      const now = performance.now();
      while (this.#queue.length > 0 && this.#queue[0]!.due <= now) {
        const { id, status } = this.#queue.shift()!;
        this.complete(id, status);
      }
    } finally {
      this.#arm();
    }
  };
}

/**
 * Traces requests: when a request completes, appends one JSON line to `path`:
 * `{"time":1763790000123.456,"domid":1,"op":"read","sector":2048,"sectors":8,"latency":12.3,"status":0}`
 * - `time`: when the request was submitted, in ms since the Unix epoch (float, µs resolution);
 * - `domid`: the guest whose disk this is;
 * - `op`: `"read"`, `"write"`, `"flush"` or `"discard"`;
 * - `sector`, `sectors`: the range in 512-byte sectors (0 and 0 for a flush;
 *   `length / 512` for a discard);
 * - `latency`: µs from submit to completion, as the caller saw it (0.1 µs resolution);
 * - `status`: the blkif status answered (0, -1, -2).
 * The file is opened for appending (created, with its directories, if missing) and
 * written through a stream, so a request never waits for the trace's disk.
 */
export class TraceStore extends StoreWrapper {
  /** The trace file. */
  readonly path: string;
  /** The domid written on every line. */
  readonly domid: number;
  readonly #out: WriteStream;
  #writeError: unknown;

  /**
   * @throws {StorageError} when the trace file cannot be opened (`EACCES`, `EISDIR`...).
   */
  constructor(inner: StorageBackend, path: string, domid: number) {
    let fd: number;
    try {
      mkdirSync(dirname(path), { recursive: true });
      fd = openSync(path, 'a');
    } catch (err) {
      throw StorageError.fromSystemError('open', path, err);
    }
    super(inner);
    this.path = path;
    this.domid = domid;
    this.#out = createWriteStream(path, { fd });
    this.#out.on('error', (err) => { this.#writeError ??= err; });
  }

  protected override completed(req: StorageRequest, status: StorageStatus, t0: number): void {
    const line = {
      time: Math.round((performance.timeOrigin + t0) * 1000) / 1000,
      domid: this.domid,
      op: req.op,
      sector: req.offset / SECTOR_SIZE,
      sectors: storageRequestBytes(req) / SECTOR_SIZE,
      latency: Math.round((performance.now() - t0) * 10000) / 10,
      status,
    };
    this.#out.write(`${JSON.stringify(line)}\n`);
  }

  /**
   * Ends the stream once every line is written and closes the file.
   * @throws {StorageError} (as a rejection) when a write to the trace failed.
   */
  protected override async closeOwn(): Promise<void> {
    this.#out.end();
    try {
      await finished(this.#out);
    } catch (err) {
      this.#writeError ??= err;
    }
    if (this.#writeError !== undefined) throw StorageError.fromSystemError('write', this.path, this.#writeError);
  }
}
