/**
 * Byte-stream rings: the XenStore ring (`io/xs_wire.h`) and the console ring
 * (`io/console.h`) are not slot rings but circular byte buffers with a pair of
 * free-running u32 indices per direction:
 *
 * ```c
 * char buf[SIZE];              // SIZE a power of two
 * XENSTORE_RING_IDX cons, prod; // uint32_t, free-running
 * #define MASK_XENSTORE_IDX(idx) ((idx) & (XENSTORE_RING_SIZE-1))
 * ```
 *
 * The producer copies bytes to `buf[MASK(prod)]`, then publishes `prod`; the
 * consumer reads `prod`, copies bytes out, then publishes `cons`. Each index is
 * written by exactly one side. The free space is `SIZE - (prod - cons)`, the data
 * available `prod - cons`, both computed as unsigned 32-bit `(a - b) >>> 0`, so
 * indices wrap at 2^32 without special cases and every byte of the buffer is used
 * (no wasted slot).
 *
 * Memory ordering: indices are read and written only through `Atomics` on a
 * Uint32Array view; data only through `TypedArray.set`/`subarray` copies. JS Atomics
 * are sequentially consistent, so the data copy before `Atomics.store(prod)`
 * cannot be observed after it (Xen's `virt_wmb()` before the index update), and
 * `Atomics.load(prod)` before the copy-out orders the reads after it (`virt_rmb()`).
 *
 * The peer is hostile (DESIGN.md, decision 5): the only index it writes that we
 * read is checked with `(prod - cons) >>> 0 <= SIZE` (Linux `check_indexes()` in
 * `xenbus_comms.c`) and a violation throws {@link ProtocolError}. Each end keeps a
 * private copy of the index it owns and never re-reads it from shared memory, so a
 * peer scribbling on *our* index cannot make us overrun the buffer either. No
 * method loops: each call copies at most SIZE bytes and returns.
 *
 * Producer and consumer are separate classes ({@link ByteRingProducer},
 * {@link ByteRingConsumer}) so a consumer operation cannot be called on a producer.
 *
 * @see io/xs_wire.h (`struct xenstore_domain_interface`), io/console.h
 *   (`struct xencons_interface`), Linux `drivers/xen/xenbus/xenbus_comms.c`
 */
import { invariant, ProtocolError } from './errors.ts';
import type { Layout } from './layout.ts';

/**
 * Where one direction of a byte ring lives inside a shared region: the data
 * buffer (`size` bytes at `dataOffset`, `size` a power of two) and the byte
 * offsets of its u32 consumer and producer indices (4-byte aligned).
 */
export interface ByteRingSpec {
  /** Byte offset of the data buffer in the region. */
  readonly dataOffset: number;
  /** Data buffer size in bytes; a power of two. */
  readonly size: number;
  /** Byte offset of the u32 consumer index (`*_cons`). */
  readonly consOffset: number;
  /** Byte offset of the u32 producer index (`*_prod`). */
  readonly prodOffset: number;
  /**
   * The buffer's own region when it is not in the indices' one (libxenvchan's rings
   * of 4 KiB and more sit in their own granted pages); `dataOffset` is then an offset
   * into it. Default: the indices' region.
   */
  readonly dataRegion?: Uint8Array;
}

/**
 * Builds a {@link ByteRingSpec} from a layout table: `data` names the `bytes`
 * field holding the buffer, `cons`/`prod` the u32 index fields. This keeps every
 * offset in the layout table (STYLE.md, "a layout is data").
 *
 * @throws InvariantError when the fields are missing or of the wrong type.
 */
export function byteRingSpec<F extends string>(layout: Layout<F>, data: F, cons: F, prod: F): ByteRingSpec {
  const d = layout.fields[data];
  const c = layout.fields[cons];
  const p = layout.fields[prod];
  invariant(d !== undefined && d.type === 'bytes', `${layout.name}.${data} is not a byte buffer`);
  invariant(c !== undefined && c.type === 'u32', `${layout.name}.${cons} is not a u32 index`);
  invariant(p !== undefined && p.type === 'u32', `${layout.name}.${prod} is not a u32 index`);
  return Object.freeze({ dataOffset: d.offset, size: d.size, consOffset: c.offset, prodOffset: p.offset });
}

/** Byte and call counters of one ring end (STYLE.md, "count everything"). */
export interface ByteRingCounters {
  /** Bytes copied into (producer) or out of (consumer) the ring. */
  bytes: number;
  /** Calls that moved at least one byte (each is one index update to signal). */
  updates: number;
  /** Calls that found the ring full (producer) or empty (consumer). */
  stalls: number;
}

/**
 * What the two ends share: the region, the data buffer view, the two index views
 * and the overflow check. Not constructed directly: use {@link ByteRingProducer}
 * or {@link ByteRingConsumer}.
 */
export abstract class ByteRing {
  /** Data buffer size in bytes (a power of two). */
  readonly size: number;
  /** Counters for this end. */
  readonly counters: ByteRingCounters = { bytes: 0, updates: 0, stalls: 0 };
  /** The data buffer: `size` bytes of the shared region. */
  protected readonly data: Uint8Array;
  /** Index mask, `size - 1`. */
  protected readonly mask: number;
  /** One-element view of the u32 consumer index (Atomics only). */
  protected readonly consView: Uint32Array;
  /** One-element view of the u32 producer index (Atomics only). */
  protected readonly prodView: Uint32Array;

  /**
   * @param region the shared bytes holding the buffer and both indices (usually a
   *   whole 4 KiB page over a SharedArrayBuffer).
   * @param spec where the buffer and indices are inside `region`.
   * @throws InvariantError when `spec` does not fit `region`, `size` is not a
   *   power of two, an index is misaligned or overlaps the buffer (a pvio bug).
   */
  protected constructor(region: Uint8Array, spec: ByteRingSpec) {
    const { dataOffset, size, consOffset, prodOffset } = spec;
    const dataRegion = spec.dataRegion ?? region;
    invariant(Number.isInteger(size) && size > 0 && (size & (size - 1)) === 0, `byte ring size ${size} is not a power of two`);
    invariant(Number.isInteger(dataOffset) && dataOffset >= 0 && dataOffset + size <= dataRegion.byteLength, 'byte ring buffer does not fit the region');
    for (const off of [consOffset, prodOffset]) {
      invariant(Number.isInteger(off) && off >= 0 && off + 4 <= region.byteLength, `byte ring index @${off} does not fit the region`);
      invariant(((region.byteOffset + off) & 3) === 0, `byte ring index @${off} is not 4-byte aligned`);
      invariant(dataRegion !== region || off + 4 <= dataOffset || off >= dataOffset + size, `byte ring index @${off} overlaps the buffer`);
    }
    invariant(consOffset !== prodOffset, 'byte ring cons and prod share one word');
    this.size = size;
    this.mask = size - 1;
    this.data = dataRegion.subarray(dataOffset, dataOffset + size);
    this.consView = new Uint32Array(region.buffer, region.byteOffset + consOffset, 1);
    this.prodView = new Uint32Array(region.buffer, region.byteOffset + prodOffset, 1);
  }

  /**
   * Bytes in flight, `(prod - cons) >>> 0`, checked against the ring size.
   * @throws ProtocolError when the peer wrote an impossible index.
   */
  protected inFlight(prod: number, cons: number): number {
    const used = (prod - cons) >>> 0;
    if (used > this.size) {
      throw new ProtocolError(`byte ring index overflow: prod ${prod} - cons ${cons} = ${used} > size ${this.size}`);
    }
    return used;
  }
}

/**
 * The producer end of a byte ring: owns `prod`, reads the peer's `cons`.
 * It takes its starting `prod` from shared memory once, at construction (the
 * guest must not assume indices start at 0), then keeps a private copy.
 */
export class ByteRingProducer extends ByteRing {
  private prod: number;

  /** @see ByteRing's constructor for parameters and errors. */
  constructor(region: Uint8Array, spec: ByteRingSpec) {
    super(region, spec);
    this.prod = Atomics.load(this.prodView, 0);
  }

  /** The producer index as last published (u32). */
  get prodIndex(): number {
    return this.prod;
  }

  /**
   * Free bytes in the ring now.
   * @throws ProtocolError when the consumer index is impossible.
   */
  free(): number {
    return this.size - this.inFlight(this.prod, Atomics.load(this.consView, 0));
  }

  /**
   * Copies as much of `bytes` as fits, then publishes the new `prod`.
   * The caller signals the peer (event channel) when the result is non-zero.
   *
   * @returns bytes written, 0..min(bytes.length, size).
   * @throws ProtocolError when the consumer index is impossible (nothing written).
   */
  write(bytes: Uint8Array): number {
    const prod = this.prod;
    const cons = Atomics.load(this.consView, 0);
    const space = this.size - this.inFlight(prod, cons);
    const n = Math.min(space, bytes.byteLength);
    if (n === 0) {
      if (bytes.byteLength > 0) this.counters.stalls++;
      return 0;
    }
    const off = prod & this.mask;
    const first = Math.min(n, this.size - off);
    this.data.set(bytes.subarray(0, first), off);
    if (n > first) this.data.set(bytes.subarray(first, n), 0);
    const next = (prod + n) >>> 0;
    // The data copy above must be visible before the new prod (virt_wmb()); the
    // SeqCst store orders it.
    Atomics.store(this.prodView, 0, next);
    this.prod = next;
    this.counters.bytes += n;
    this.counters.updates++;
    return n;
  }
}

/**
 * The consumer end of a byte ring: owns `cons`, reads the peer's `prod`.
 * It takes its starting `cons` from shared memory once, at construction, then
 * keeps a private copy.
 */
export class ByteRingConsumer extends ByteRing {
  private cons: number;

  /** @see ByteRing's constructor for parameters and errors. */
  constructor(region: Uint8Array, spec: ByteRingSpec) {
    super(region, spec);
    this.cons = Atomics.load(this.consView, 0);
  }

  /** The consumer index as last published (u32). */
  get consIndex(): number {
    return this.cons;
  }

  /**
   * Bytes the producer has published and we have not consumed.
   * @throws ProtocolError when the producer index is impossible.
   */
  available(): number {
    return this.inFlight(Atomics.load(this.prodView, 0), this.cons);
  }

  /**
   * Copies up to `into.length` available bytes into `into`, then publishes the
   * new `cons`. The caller signals the peer when the result is non-zero (the
   * producer may be waiting for space).
   *
   * @returns bytes read, 0..min(into.length, size).
   * @throws ProtocolError when the producer index is impossible (nothing read).
   */
  read(into: Uint8Array): number {
    const cons = this.cons;
    // Read prod before the data (virt_rmb()): SeqCst load.
    const avail = this.inFlight(Atomics.load(this.prodView, 0), cons);
    const n = Math.min(avail, into.byteLength);
    if (n === 0) {
      if (into.byteLength > 0) this.counters.stalls++;
      return 0;
    }
    const off = cons & this.mask;
    const first = Math.min(n, this.size - off);
    into.set(this.data.subarray(off, off + first), 0);
    if (n > first) into.set(this.data.subarray(0, n - first), first);
    const next = (cons + n) >>> 0;
    // The copy-out above completes before the producer may reuse the space.
    Atomics.store(this.consView, 0, next);
    this.cons = next;
    this.counters.bytes += n;
    this.counters.updates++;
    return n;
  }
}
