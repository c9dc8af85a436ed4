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

  /** @param chunkBytes bytes per chunk (default {@link FRAG_CHUNK_BYTES}). */
  constructor(private readonly chunkBytes = FRAG_CHUNK_BYTES) {}

  /**
   * A private copy of `src[offset, offset + len)`: a view of `len` bytes of a chunk,
   * which nobody else is handed. Offsets in bytes.
   * @throws RangeError when the range is not inside `src`.
   */
  copy(src: Uint8Array, offset = 0, len = src.length - offset): Uint8Array {
    if (!(offset >= 0 && len >= 0 && offset + len <= src.length)) throw new RangeError(`range ${offset}+${len} is outside ${src.length} bytes`);
    if (this.at + len > this.chunk.length) {
      this.chunk = new Uint8Array(Math.max(this.chunkBytes, len));
      this.at = 0;
    }
    const at = this.at;
    const f = this.chunk.subarray(at, at + len);
    f.set(offset === 0 && len === src.length ? src : src.subarray(offset, offset + len));
    this.at = (at + len + 7) & ~7; // 8-byte aligned, like the allocator it follows
    return f;
  }
}
