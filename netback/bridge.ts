/**
 * dom0's bridge (`xenbr0`, ...): a learning switch between vifs, as Linux's bridge
 * joins Xen's vif devices. Each frame's source MAC is learnt on the port it came in
 * by; a frame to a known unicast MAC goes to that port only, a broadcast, multicast
 * or unknown destination floods every other port. A frame is never sent back out of
 * the port it came in by.
 *
 * Checksums: a frame whose L4 checksum is partial (`NETTXF_csum_blank` from its
 * frontend) keeps it partial only towards ports that accept checksum offload; before
 * it leaves for any other port — and for the capture — the bridge completes it, as
 * Linux does (`skb_checksum_help`) when it forwards to a device without offload.
 *
 * The capture (a {@link PcapWriter}) sees every frame that enters the bridge, once,
 * with complete checksums.
 *
 * @see Linux net/bridge/br_forward.c, br_fdb.c
 */
import { completeChecksum } from '../netfront/frame.ts';
import type { PcapWriter } from './pcap.ts';

/** One port of a bridge: a vif queue set, or a TAP. */
export interface BridgePort {
  /** `vif<domid>.<devid>`, `tap0`, ... */
  readonly name: string;
  /** Whether frames with partial checksums may be handed to this port as they are. */
  readonly csumOffload: boolean;
  /**
   * Takes a frame out of the bridge. The frame is shared with other ports and must
   * not be written; it is only valid during the call (it may be a view of the
   * sending guest's page or of a bounce reused afterwards): a port that keeps it
   * copies it. `csumBlank` only when {@link csumOffload}.
   */
  output(frame: Uint8Array, csumBlank: boolean): void;
}

/**
 * What a user's bridge-port module (`Machine.addBridgePort`) gets: the bridge's name,
 * the arguments given, and `input` to put frames into the bridge as its port.
 */
export interface BridgePortContext {
  readonly bridge: string;
  readonly args: unknown;
  /** Puts a frame into the bridge through this port (copied as the bridge needs). */
  input(frame: Uint8Array, csumBlank?: boolean): void;
  /** dom0's console, for the port's log lines. */
  log(...args: unknown[]): void;
}

/**
 * A user's bridge-port module: its default export makes the port (loaded in dom0,
 * the bridge's domain). `name` is the port's name in reports; `output` gets each
 * frame the bridge sends to it (valid only during the call).
 */
export type BridgePortModule = (ctx: BridgePortContext) => { readonly name: string; readonly csumOffload?: boolean; output(frame: Uint8Array, csumBlank: boolean): void };

/** Counters of a bridge (frames, not bytes, except `bytes`). */
export interface BridgeCounters {
  /** Frames that entered the bridge. */
  frames: number;
  bytes: number;
  /** Frames sent to one known port. */
  forwarded: number;
  /** Frames sent to every other port (broadcast, multicast, unknown destination). */
  flooded: number;
  /** Frames whose destination is the port they came in by (dropped, as a switch does). */
  filtered: number;
  /** Partial checksums completed here. */
  checksumsCompleted: number;
  /** Frames written to the capture. */
  captured: number;
}

/** The 48-bit MAC at byte `at` of frame `f` as a number (exact in a double): the forwarding database's key. */
export function macKey(f: Uint8Array, at: number): number {
  return ((f[at] * 256 + f[at + 1]) * 65536 + (f[at + 2] * 256 + f[at + 3])) * 65536 + (f[at + 4] * 256 + f[at + 5]);
}

/** A learning switch. */
export class Bridge {
  readonly counters: BridgeCounters = { frames: 0, bytes: 0, forwarded: 0, flooded: 0, filtered: 0, checksumsCompleted: 0, captured: 0 };
  private readonly ports = new Set<BridgePort>();
  /** The forwarding database: MAC → the port it was last seen on. */
  private readonly fdb = new Map<number, BridgePort>();

  /** @param capture where every frame entering the bridge is written, or null. */
  constructor(readonly name: string, private capture: PcapWriter | null = null) {}

  /** Attaches a port. */
  addPort(p: BridgePort): void {
    this.ports.add(p);
  }

  /** Detaches a port and forgets the MACs learnt on it. */
  removePort(p: BridgePort): void {
    this.ports.delete(p);
    for (const [mac, port] of this.fdb) if (port === p) this.fdb.delete(mac);
  }

  /** Names of the attached ports. */
  portNames(): string[] {
    return [...this.ports].map((p) => p.name);
  }

  /** Sets (or clears) the capture. */
  setCapture(capture: PcapWriter | null): void {
    this.capture = capture;
  }

  /**
   * A frame enters the bridge through `from`. The frame need only stay valid and
   * unchanged during the call: ports copy what they keep (see {@link BridgePort.output}).
   * @param csumBlank its L4 checksum is partial.
   */
  input(from: BridgePort, frame: Uint8Array, csumBlank: boolean): void {
    if (frame.length < 14) return;
    const c = this.counters;
    c.frames++;
    c.bytes += frame.length;
    if ((frame[6] & 1) === 0) {
      const src = macKey(frame, 6);
      if (this.fdb.get(src) !== from) this.fdb.set(src, from);
    }
    // The complete copy of a partial-checksum frame is made once, when a port (or the capture) needs it.
    let complete: Uint8Array | null = csumBlank ? null : frame;
    if (this.capture) {
      complete ??= this.completed(frame);
      this.capture.write(complete);
      c.captured++;
    }
    const to = (frame[0] & 1) !== 0 ? undefined : this.fdb.get(macKey(frame, 0));
    if (to !== undefined) { // the fdb only holds attached ports (removePort forgets the rest)
      if (to === from) {
        c.filtered++;
        return;
      }
      c.forwarded++;
      if (csumBlank && to.csumOffload) to.output(frame, true);
      else to.output(complete ?? this.completed(frame), false);
      return;
    }
    c.flooded++;
    for (const p of this.ports) {
      if (p === from) continue;
      if (csumBlank && p.csumOffload) p.output(frame, true);
      else p.output(complete ??= this.completed(frame), false);
    }
  }

  /** A copy of `frame` with its partial L4 checksum completed. */
  private completed(frame: Uint8Array): Uint8Array {
    const f = frame.slice();
    if (completeChecksum(f)) this.counters.checksumsCompleted++;
    return f;
  }
}
