/**
 * Frame copies carved from shared chunks, as Linux's page-fragment allocator
 * (`napi_alloc_frag`) carves skb heads from pages: one allocation per chunk, not per
 * frame. V8 keeps a typed array over 64 bytes off the JS heap, so a `slice()` per
 * received frame costs a malloc, external-memory accounting and, at a few hundred
 * MB/s, a full mark-compact every few tens of milliseconds; a view of a chunk costs
 * none of that.
 *
 * Chunks are recycled when their frames are given back: each chunk counts its live
 * frames; {@link FragAllocator.release} gives one back, and a chunk none of whose
 * frames is live any more (and that is no longer being filled) goes to a free list
 * that the next chunk is taken from. A frame handed to someone who keeps it pins its
 * chunk ({@link FragAllocator.pin}): a pinned chunk is never reused, the GC frees it
 * once no frame of it is referenced.
 *
 * Used by netfront (frames copied out of rx buffers, lent to a `receiveBatch` with
 * `borrow` until the next one) and netback (frames waiting in a vif's rx queue until
 * they are written into the guest's buffers).
 */

/** Bytes of a chunk (a frame larger than this gets a chunk of its own). */
export const FRAG_CHUNK_BYTES = 64 * 1024;
/** Free chunks kept for reuse, at most (the rest are left to the GC). */
export const FRAG_FREE_CHUNKS = 64;

/** A chunk frames are carved from; opaque outside this module but for identity. */
export interface FragChunk {
  /** The chunk's bytes. */
  readonly buf: Uint8Array;
  /** Frames of it not given back. */
  live: number;
  /** A frame of it was handed out for keeps: never reused. */
  pinned: boolean;
}

/** Hands out private copies of byte ranges, each a view of a shared chunk. */
export class FragAllocator {
  private cur: FragChunk = { buf: new Uint8Array(0), live: 0, pinned: true };
  private at = 0;
  /** Start of the frame being built by {@link start}/{@link append}, or -1. */
  private frameStart = -1;
  private readonly free: FragChunk[] = [];
  /** The chunk of the frame {@link finish} (or {@link copy}) returned last. */
  lastChunk: FragChunk = this.cur;
  /** Chunks allocated, and chunks reused from the free list. */
  readonly counters = { chunksAllocated: 0, chunksReused: 0 };

  /** @param chunkBytes bytes per chunk (default {@link FRAG_CHUNK_BYTES}). */
  constructor(private readonly chunkBytes = FRAG_CHUNK_BYTES) {}

  /**
   * A private copy of `src[offset, offset + len)`: a view of `len` bytes of a chunk,
   * which nobody else is handed while it is live. Offsets in bytes. Its chunk is
   * {@link lastChunk} until the next frame.
   * @throws RangeError when the range is not inside `src`; Error while a frame is being built.
   */
  copy(src: Uint8Array, offset = 0, len = src.length - offset): Uint8Array {
    this.start(len);
    this.append(src, offset, len);
    return this.finish();
  }

  /**
   * Starts a frame whose parts {@link append} copies one after the other, contiguous;
   * `expectBytes` (bytes) is room made ahead, so a frame of up to that size never
   * moves (a larger one is moved to a bigger chunk as it grows).
   * @throws Error when a frame is already being built.
   */
  start(expectBytes: number): void {
    if (this.frameStart >= 0) throw new Error('FragAllocator: a frame is already being built');
    if (this.at + expectBytes > this.cur.buf.length) this.newChunk(expectBytes, 0);
    this.frameStart = this.at;
  }

  /**
   * Appends `src[offset, offset + len)` to the frame being built.
   * @throws RangeError when the range is not inside `src`; Error with no frame started.
   */
  append(src: Uint8Array, offset: number, len: number): void {
    if (this.frameStart < 0) throw new Error('FragAllocator: append with no frame started');
    if (!(offset >= 0 && len >= 0 && offset + len <= src.length)) throw new RangeError(`range ${offset}+${len} is outside ${src.length} bytes`);
    if (this.at + len > this.cur.buf.length) {
      const have = this.at - this.frameStart;
      this.newChunk(Math.max(2 * (have + len), this.chunkBytes), have);
    }
    this.cur.buf.set(offset === 0 && len === src.length ? src : src.subarray(offset, offset + len), this.at);
    this.at += len;
  }

  /** Bytes of the frame being built so far (0 with none). */
  get building(): number {
    return this.frameStart < 0 ? 0 : this.at - this.frameStart;
  }

  /**
   * Ends the frame being built. @returns it (a view of its chunk, {@link lastChunk}).
   * @throws Error with no frame started.
   */
  finish(): Uint8Array {
    if (this.frameStart < 0) throw new Error('FragAllocator: finish with no frame started');
    const f = this.cur.buf.subarray(this.frameStart, this.at);
    this.frameStart = -1;
    this.at = (this.at + 7) & ~7; // 8-byte aligned, like the allocator it follows
    this.cur.live++;
    this.lastChunk = this.cur;
    return f;
  }

  /** Drops the frame being built (its bytes are reused); nothing when none is. */
  abort(): void {
    if (this.frameStart < 0) return;
    this.at = this.frameStart;
    this.frameStart = -1;
  }

  /**
   * Gives back one frame of `chunk`: the caller (and whoever it lent the frame to)
   * will not touch its bytes again. A chunk with no live frame left is reused.
   */
  release(chunk: FragChunk): void {
    if (chunk.live > 0) chunk.live--;
    if (chunk.live === 0 && chunk !== this.cur && !chunk.pinned) this.recycle(chunk);
  }

  /** A frame of `chunk` is handed out for keeps: the chunk is never reused. */
  pin(chunk: FragChunk): void {
    chunk.pinned = true;
  }

  private recycle(chunk: FragChunk): void {
    if (this.free.length < FRAG_FREE_CHUNKS && chunk.buf.length === this.chunkBytes) this.free.push(chunk);
  }

  /** Moves to a chunk of at least `bytes` (a free one if it is big enough), carrying over the `keep` bytes of the frame being built. */
  private newChunk(bytes: number, keep: number): void {
    const old = this.cur;
    let next: FragChunk;
    if (bytes <= this.chunkBytes && this.free.length > 0) {
      next = this.free.pop()!;
      next.live = 0;
      this.counters.chunksReused++;
    } else {
      next = { buf: new Uint8Array(Math.max(this.chunkBytes, bytes)), live: 0, pinned: false };
      this.counters.chunksAllocated++;
    }
    if (keep > 0) next.buf.set(old.buf.subarray(this.frameStart, this.frameStart + keep));
    this.cur = next;
    this.at = keep;
    if (this.frameStart >= 0) this.frameStart = 0;
    if (old.live === 0 && !old.pinned) this.recycle(old);
  }
}
