/**
 * Frame copies carved from shared chunks, as Linux's page-fragment allocator
 * (`napi_alloc_frag`) carves skb heads from pages: one allocation per chunk, not per
 * frame. V8 keeps a typed array over 64 bytes off the JS heap, so a `slice()` per
 * received frame costs a malloc and a GC finaliser; a view of a chunk costs neither.
 * A chunk lives as long as any frame carved from it.
 *
 * Used by netfront (frames copied out of rx buffers) and netback (frames waiting in
 * a vif's rx queue).
 */

/** Bytes of a chunk (a frame larger than this gets a chunk of its own). */
export const FRAG_CHUNK_BYTES = 64 * 1024;

/** Hands out private copies of byte ranges, each a view of a shared chunk. */
export class FragAllocator {
  private chunk = new Uint8Array(0);
  private at = 0;
  /** Start of the frame being built by {@link start}/{@link append}, or -1. */
  private frameStart = -1;

  /** @param chunkBytes bytes per chunk (default {@link FRAG_CHUNK_BYTES}). */
  constructor(private readonly chunkBytes = FRAG_CHUNK_BYTES) {}

  /**
   * A private copy of `src[offset, offset + len)`: a view of `len` bytes of a chunk,
   * which nobody else is handed. Offsets in bytes.
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
    if (this.at + expectBytes > this.chunk.length) this.newChunk(expectBytes, 0);
    this.frameStart = this.at;
  }

  /**
   * Appends `src[offset, offset + len)` to the frame being built.
   * @throws RangeError when the range is not inside `src`; Error with no frame started.
   */
  append(src: Uint8Array, offset: number, len: number): void {
    if (this.frameStart < 0) throw new Error('FragAllocator: append with no frame started');
    if (!(offset >= 0 && len >= 0 && offset + len <= src.length)) throw new RangeError(`range ${offset}+${len} is outside ${src.length} bytes`);
    if (this.at + len > this.chunk.length) {
      const have = this.at - this.frameStart;
      this.newChunk(Math.max(2 * (have + len), this.chunkBytes), have);
    }
    this.chunk.set(offset === 0 && len === src.length ? src : src.subarray(offset, offset + len), this.at);
    this.at += len;
  }

  /** Bytes of the frame being built so far (0 with none). */
  get building(): number {
    return this.frameStart < 0 ? 0 : this.at - this.frameStart;
  }

  /**
   * Ends the frame being built. @returns it (a view of its chunk).
   * @throws Error with no frame started.
   */
  finish(): Uint8Array {
    if (this.frameStart < 0) throw new Error('FragAllocator: finish with no frame started');
    const f = this.chunk.subarray(this.frameStart, this.at);
    this.frameStart = -1;
    this.at = (this.at + 7) & ~7; // 8-byte aligned, like the allocator it follows
    return f;
  }

  /** Drops the frame being built (its bytes are reused); nothing when none is. */
  abort(): void {
    if (this.frameStart < 0) return;
    this.at = this.frameStart;
    this.frameStart = -1;
  }

  /** A new chunk of at least `bytes`, carrying over the `keep` bytes of the frame being built. */
  private newChunk(bytes: number, keep: number): void {
    const c = new Uint8Array(Math.max(this.chunkBytes, bytes));
    if (keep > 0) c.set(this.chunk.subarray(this.frameStart, this.frameStart + keep));
    this.chunk = c;
    this.at = keep;
    if (this.frameStart >= 0) this.frameStart = 0;
  }
}
