/**
 * `pvio bench net`: pvio's virtual network end to end — a guest's netfront → netif
 * rings → dom0's netback → the bridge → netback → netif rings → another guest's
 * netfront — against two relays of the same shape without pvio, in one process run.
 * See bench/README.md, section `pvio bench net`.
 *
 * Topology, the same for everything: a sender, a switch, a receiver (three threads).
 * - `pvio`: two guests (bench/guests/net-guest.ts) with one vif each on their own
 *   bridge in dom0; the sender paces unicast frames to the receiver's MAC (the bridge
 *   learnt it from the receiver's `hello`). Variants: data path `copy` (grant copy,
 *   Linux's way) or `persistent` (pvio's persistently granted pool), and 1 or 2 queues
 *   (2 queues: 2-vCPU guests). The hypervisor worker is a fourth thread (grant-copy
 *   hypercalls), dom0 the switch.
 * - `messageport-relay` (`copy`, `transfer`) and `minimal-ring-relay` (`copy`):
 *   bench/workers/net-relay-worker.ts, three workers.
 *
 * Frames: 64 bytes (packets per second), 1500 bytes (Gbit/s), 65535 bytes — the
 * largest netif packet, "64 KiB", with `feature-sg` (16 slots each; pvio sends them as
 * GSO frames: a `XEN_NETIF_GSO_TYPE_TCPV4` extra-info slot, MSS 1460). Ethernet header,
 * ethertype 0x88b5, run id and sequence number, filler.
 *
 * One **window** offers frames at a rate for `--window` ms (or floods: back to back,
 * held back only by the sender's own ring or credit) and counts what the receiver got
 * of that window; drops = sent − received. One **search** (per member, per round):
 * a flood window first (the highest offered rate: its delivered rate is `pps`, its
 * drops `dropsPerPacket`); if it dropped nothing, its delivered rate is the zero-drop
 * rate; else `--steps` paced windows search the rate: start at 0.95 × the flood's
 * delivered rate, go down ×0.75 until a window passes, then bisect between the highest
 * pass and the lowest fail (upper bound 1.2 × the flood's delivered rate). A window
 * **passes** when nothing was dropped and the sender sent every frame the pacing
 * asked for within 5% (+2 ms) of the window. Zero-drop pps = received / window of the
 * highest passing window.
 *
 * Scheduling: a group is one frame size with its members (4 pvio variants, 3
 * baselines; `--quick`: pvio 1 queue only); a round runs every member's search in
 * turn (A B C A B C ...), so only one member ever runs — the pvio guests of the other
 * variants sit idle (blocked), and the baselines never overlap pvio windows. Ratios
 * are medians of per-round ratios (harness.pairwiseRatios). Units: bytes, packets/s,
 * Gbit/s = 1e9 bit/s of Ethernet frames (no preamble or inter-frame gap).
 */
import { writeFileSync } from 'node:fs';
import { MessageChannel } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SpinTokens } from '../hypervisor/spin.ts';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import {
  BENCH_SPIN_TOKENS, benchOptionsOrExit, BenchWorker, formatSig, machineInfo, median, meets, pairwiseRatios, parseBenchArgs, restoreSpinTokens, svgChart,
  type ChartSeries, type MachineInfo, type RatioResult, writeJsonReport } from './harness.ts';
import type { NetGuestInfo, RxResult, TxArgs, TxResult } from './guests/net-guest.ts';
import { macBytes } from './guests/net-guest.ts';
import {
  egressFrames, RELAY_CTL, RELAY_CTL_BYTES, RING, createRing, egressRingBytes, netifSlots,
  type RelayImpl, type RelayMidResult, type RelayMode, type RelayRxResult, type RelaySetup, type RelayTxArgs, type RelayTxResult,
} from './workers/net-relay-worker.ts';

/** Usage text of `pvio bench net`. */
export const BENCH_NET_USAGE = `usage: pvio bench net [--json FILE] [--svg FILE] [--quick] [--rounds N] [--window MS] [--steps N]
                      [--warmup MS] [--budget S] [--frames LIST] [--no-queues2] [--only TEXT] [--spin-tokens N]`;

const GUEST = fileURLToPath(new URL('./guests/net-guest.ts', import.meta.url));
const RELAY_WORKER = new URL('./workers/net-relay-worker.ts', import.meta.url);

// ---------------------------------------------------------------------------
// Vocabulary

/** Rows' `impl`. */
export type NetImpl = 'pvio' | RelayImpl;
/** pvio: `copy` (grant copy) or `persistent` (pvio's persistent pool); baselines: `copy` or `transfer`. */
export type NetMode = 'copy' | 'persistent' | RelayMode;

/** What one window asks for. */
export interface WindowSpec {
  /** Bytes per frame, Ethernet header included. */
  readonly frameBytes: number;
  /** Offered rate, packets/s; 0 = flood. */
  readonly rate: number;
  /** Window length, ms. */
  readonly ms: number;
}

/** What one window measured (raw counts; the rates are derived from them). */
export interface WindowResult {
  /** Offered rate asked for, packets/s; 0 for a flood. */
  readonly rate: number;
  /** Frames the pacing asked for (a flood: equal to `sent`). */
  readonly scheduled: number;
  /** Frames the sender handed over. */
  readonly sent: number;
  /** Frames of this window the receiver got. */
  readonly received: number;
  /** Bytes of those frames. */
  readonly bytes: number;
  /** The sender's first → last send, ms. */
  readonly txMs: number;
  /** The receiver's first → last frame, ms. */
  readonly rxMs: number;
  /** sent − received. */
  readonly drops: number;
  /** Event-channel / wake-up notifications of every party over the window; null where not counted. */
  readonly notifications: number | null;
  /** pvio: counter deltas (netfront and netback) over the window. */
  readonly counters?: Record<string, number>;
}

/** One search of one member in one round. */
export interface SearchResult {
  readonly round: number;
  /** The flood window (the highest offered rate). */
  readonly flood: WindowResult;
  /** The paced windows, in the order they ran. */
  readonly steps: WindowResult[];
  /** Delivered packets/s of the highest passing window; 0 when none passed. */
  readonly zeroDropPps: number;
  /** The offered rate of that window (0 for the flood); null when none passed. */
  readonly zeroDropRate: number | null;
}

/** A member of a group: one implementation at one configuration (what {@link searchZeroDrop} drives). */
export interface NetMember {
  readonly impl: NetImpl;
  readonly mode: NetMode;
  readonly queues: number;
  /** Runs one window. */
  run(w: WindowSpec): Promise<WindowResult>;
}

/** One row of the report (JSON `rows[]`). */
export interface NetRow {
  readonly impl: NetImpl;
  /** Bytes per frame, Ethernet header included. */
  readonly frameBytes: number;
  readonly mode: NetMode;
  /** Queues per vif (pvio); 1 for the baselines. */
  readonly queues: number;
  /** Median over rounds of the flood window's delivered packets/s (the highest offered rate). */
  readonly pps: number | null;
  /** `pps` in Gbit/s (1e9 bit/s of frame bytes). */
  readonly gbitPerSec: number | null;
  /** Median over rounds of the sender's rate in the flood window, packets/s (what was offered). */
  readonly offeredPps: number | null;
  /** Median over rounds of the highest zero-drop rate found, packets/s. */
  readonly zeroDropPps: number | null;
  /** `zeroDropPps` in Gbit/s. */
  readonly zeroDropGbitPerSec: number | null;
  /** Notifications of every party per delivered packet in the flood windows (pooled); null where not counted (MessagePort). */
  readonly notificationsPerPacket: number | null;
  /** Drops per packet sent at the highest offered rate (flood windows, pooled). */
  readonly dropsPerPacket: number | null;
  /** Drops in the flood windows, all rounds. */
  readonly drops: number | null;
  /** Rounds with a search. */
  readonly rounds: number;
  /** Per round: flood pps, zero-drop pps, drops at flood. */
  readonly perRound: Array<{ round: number; pps: number; zeroDropPps: number; zeroDropRate: number | null; floodDrops: number; floodSent: number; windows: number }>;
  /** pvio: counter deltas per delivered packet in the flood windows (grant copies, hypercalls, drops by place ...). */
  readonly perPacket?: Record<string, number>;
  readonly error?: string;
}

/** The JSON report. */
export interface NetReport {
  readonly machine: MachineInfo;
  readonly config: Record<string, unknown>;
  readonly rows: NetRow[];
  readonly ratios: RatioResult[];
  /** Every search of every member (raw windows). */
  readonly searches: Array<{ key: string; results: SearchResult[] }>;
  readonly durationMs: number;
  readonly notes: string[];
}

// ---------------------------------------------------------------------------
// Options

/** Parsed options of `bench net`. */
export interface BenchNetOptions {
  json: string | null;
  svg: string | null;
  quick: boolean;
  rounds: number;
  /** Window length, ms. */
  windowMs: number;
  /** Paced windows per search after the flood. */
  steps: number;
  /** Flood warm-up before each member's search, ms (the first one of a member is 4× longer). */
  warmupMs: number;
  budgetS: number;
  /** Frame sizes, bytes. */
  frames: number[];
  /** Include the 2-queue pvio variants. */
  queues2: boolean;
  /** Run only the members whose key (e.g. `pvio persistent q1 64B`, `messageport-relay copy 1500B`) contains this text; null: all. */
  only: string | null;
  /** Spin tokens of the run (threads that may spin at once; default {@link BENCH_SPIN_TOKENS}, one per core). */
  spinTokens: number;
  help: boolean;
}

/** Frame sizes of a full run, bytes: 64, 1500 and 65535 (the largest netif packet, with feature-sg). */
export const DEFAULT_FRAMES: readonly number[] = Object.freeze([64, 1500, 65535]);

/** Parses the arguments after `bench net`. @throws Error naming the bad argument. */
export function parseBenchNetArgs(argv: readonly string[]): BenchNetOptions {
  const { values: v, help } = parseBenchArgs(argv, {
    json: { kind: 'string' }, svg: { kind: 'string' }, quick: { kind: 'flag' },
    rounds: { kind: 'number', min: 1, integer: true }, window: { kind: 'number', min: 10 }, steps: { kind: 'number', min: 0, integer: true },
    warmup: { kind: 'number', min: 0 }, budget: { kind: 'number', min: 1 }, frames: { kind: 'string' }, 'no-queues2': { kind: 'flag' },
    only: { kind: 'string' }, 'spin-tokens': { kind: 'number', min: 0, integer: true },
  });
  const quick = v.quick === true;
  let frames = [...DEFAULT_FRAMES];
  if (typeof v.frames === 'string') {
    frames = v.frames.split(',').map((x) => Number(x.trim()));
    if (frames.length === 0 || frames.some((f) => !Number.isInteger(f) || f < 64 || f > 65535)) {
      throw new Error(`--frames: '${v.frames}' is not a list of frame sizes 64 … 65535`);
    }
  }
  return {
    json: (v.json as string) ?? null, svg: (v.svg as string) ?? null, quick,
    rounds: (v.rounds as number) ?? (quick ? 2 : 7),
    windowMs: (v.window as number) ?? (quick ? 60 : 300),
    steps: (v.steps as number) ?? (quick ? 3 : 5),
    warmupMs: (v.warmup as number) ?? (quick ? 30 : 60),
    budgetS: (v.budget as number) ?? (quick ? 45 : 540),
    frames, queues2: !quick && v['no-queues2'] !== true, only: (v.only as string) ?? null,
    spinTokens: (v['spin-tokens'] as number) ?? BENCH_SPIN_TOKENS, help,
  };
}

// ---------------------------------------------------------------------------
// Statistics of a window

/** Whether a paced window passed: no drop, and every frame asked for was sent in time. */
export function windowPassed(w: WindowResult, windowMs: number): boolean {
  if (w.drops !== 0 || w.received === 0) return false;
  if (w.rate === 0) return true; // a flood that dropped nothing
  return w.sent >= w.scheduled && w.txMs <= windowMs * 1.05 + 2;
}

/** Delivered packets/s of a window: received over the longer of the send and receive spans (never over-estimates). */
export function deliveredPps(w: WindowResult, windowMs: number): number {
  const ms = Math.max(w.txMs, w.rxMs, w.rate > 0 ? windowMs * ((w.scheduled - 1) / Math.max(1, w.scheduled)) : 0, 1e-3);
  return w.received / (ms / 1000);
}

/** The sender's rate in a window, packets/s. */
export function offeredPps(w: WindowResult): number {
  return w.txMs > 0 ? w.sent / (w.txMs / 1000) : 0;
}

/** Packets/s of `frameBytes`-byte frames in Gbit/s (1e9 bit/s). */
export function gbit(pps: number | null, frameBytes: number): number | null {
  return pps === null ? null : (pps * frameBytes * 8) / 1e9;
}

/** Factor a search lowers the rate by after a failed window while no window has passed yet. */
export const SEARCH_DOWN = 0.75;

/**
 * One search (see the module comment): a flood window, then up to `steps` paced
 * windows homing in on the highest rate with no drop.
 */
export async function searchZeroDrop(m: NetMember, frameBytes: number, o: { windowMs: number; steps: number }, round: number,
  log: (s: string) => void): Promise<SearchResult> {
  const flood = await m.run({ frameBytes, rate: 0, ms: o.windowMs });
  const floodPps = deliveredPps(flood, o.windowMs);
  log(`  flood: sent ${fmt(offeredPps(flood))} pps, delivered ${fmt(floodPps)} pps, drops ${flood.drops}/${flood.sent}`);
  const steps: WindowResult[] = [];
  if (windowPassed(flood, o.windowMs)) return { round, flood, steps, zeroDropPps: floodPps, zeroDropRate: 0 };
  let best: WindowResult | null = null;
  let lo = 0;
  let hi = Math.max(1, Math.min(offeredPps(flood), floodPps * 1.2));
  let rate = Math.max(1, floodPps * 0.95);
  for (let i = 0; i < o.steps; i++) {
    const w = await m.run({ frameBytes, rate, ms: o.windowMs });
    steps.push(w);
    const ok = windowPassed(w, o.windowMs);
    log(`  ${fmt(rate)} pps: ${ok ? 'pass' : 'FAIL'} (sent ${w.sent}/${w.scheduled} in ${w.txMs.toFixed(1)} ms, drops ${w.drops})`);
    if (ok) {
      lo = rate;
      best = w;
    } else {
      hi = Math.min(hi, rate);
    }
    rate = lo > 0 ? (lo + hi) / 2 : rate * SEARCH_DOWN;
  }
  return { round, flood, steps, zeroDropPps: best ? deliveredPps(best, o.windowMs) : 0, zeroDropRate: best ? best.rate : null };
}

// ---------------------------------------------------------------------------
// pvio

/** netfront counters summed (`notificationsTx` ...) from a guest's delta. */
function num(x: Record<string, number> | undefined, k: string): number {
  return x?.[k] ?? 0;
}

/** The vif counters dom0 reports (a subset). */
type VifStats = Record<string, number>;

/** A pvio machine with one pair of guests per variant. */
class PvioNet {
  private m: Machine | null = null;
  private runId = 0;
  readonly negotiated: Record<string, unknown> = {};

  constructor(private readonly tokens: SharedArrayBuffer, private readonly log: (s: string) => void) {}

  async boot(): Promise<void> {
    this.m = await Machine.boot({ spinTokenBuffer: this.tokens, onConsole: (d, line) => this.log(`[${d}] ${line}`) });
  }

  private machine(): Machine {
    if (!this.m) throw new Error('machine not booted');
    return this.m;
  }

  /** Creates the pair of a variant (sender, receiver on their own bridge) and teaches the bridge the receiver's MAC. */
  async pair(mode: 'copy' | 'persistent', queues: number): Promise<NetMember> {
    const m = this.machine();
    const tag = `${mode === 'copy' ? 'c' : 'p'}q${queues}`;
    const bridge = `xbr-${tag}`;
    const mk = (role: string) => m.createGuest({
      name: `net-${tag}-${role}`, memoryMiB: 64, vcpus: queues, kernel: GUEST,
      vifs: [{ persistent: mode === 'persistent', queues, bridge }],
    });
    const tx = await mk('tx');
    const rx = await mk('rx');
    const [ti, ri] = (await Promise.all([tx.call('info', {}, 30_000), rx.call('info', {}, 30_000)])) as NetGuestInfo[];
    this.negotiated[`${mode} q${queues}`] = { sender: ti.features, receiver: ri.features, vcpus: ti.vcpus, bridge };
    if (ti.features.persistent !== (mode === 'persistent') || ti.features.queues !== queues || ri.features.queues !== queues || !ti.features.sg) {
      throw new Error(`pvio ${mode} q${queues}: negotiated ${JSON.stringify(ti.features)} / ${JSON.stringify(ri.features)}`);
    }
    await rx.call('hello', {}, 10_000);
    const vifTx = `${tx.name}/vif${tx.domid}.0`;
    const vifRx = `${rx.name}/vif${rx.domid}.0`;
    return { impl: 'pvio', mode, queues, run: (w) => this.window(tx, rx, ri.mac, vifTx, vifRx, w) };
  }

  private async vifs(a: string, b: string): Promise<[VifStats, VifStats]> {
    const s = (await this.machine().dom0Stats()) as { vifs: Record<string, VifStats> };
    const va = s.vifs[a];
    const vb = s.vifs[b];
    if (!va || !vb) throw new Error(`dom0 has no vif ${!va ? a : b}`);
    return [va, vb];
  }

  private async window(tx: GuestHandle, rx: GuestHandle, dst: string, vifTx: string, vifRx: string, w: WindowSpec): Promise<WindowResult> {
    const runId = ++this.runId;
    const [bt0, br0] = await this.vifs(vifTx, vifRx);
    await rx.call('rxStart', { runId }, 10_000);
    const args: TxArgs = { runId, dst, frameBytes: w.frameBytes, rate: w.rate, ms: w.ms, deadlineMs: w.ms * 2 + 200 };
    let t: TxResult | null = null;
    let txError: unknown = null;
    try {
      t = (await tx.call('tx', args, w.ms * 2 + 15_000)) as TxResult;
    } catch (e) {
      txError = e;
    }
    // Always stop the receiver, so the next window can start one.
    const r = (await rx.call('rxStop', { quietMs: 20, maxMs: 3000 }, 15_000)) as RxResult;
    if (!t) throw txError;
    const [bt1, br1] = await this.vifs(vifTx, vifRx);
    const d = (a: VifStats, b: VifStats, k: string) => (a[k] ?? 0) - (b[k] ?? 0);
    const notifications = num(t.counters, 'notificationsTx') + num(t.counters, 'notificationsRx')
      + num(r.counters, 'notificationsTx') + num(r.counters, 'notificationsRx')
      + d(bt1, bt0, 'notificationsTx') + d(bt1, bt0, 'notificationsRx') + d(br1, br0, 'notificationsTx') + d(br1, br0, 'notificationsRx');
    const counters: Record<string, number> = {
      netfrontTxNotifications: num(t.counters, 'notificationsTx') + num(r.counters, 'notificationsTx'),
      netfrontRxNotifications: num(t.counters, 'notificationsRx') + num(r.counters, 'notificationsRx'),
      netbackTxNotifications: d(bt1, bt0, 'notificationsTx') + d(br1, br0, 'notificationsTx'),
      netbackRxNotifications: d(bt1, bt0, 'notificationsRx') + d(br1, br0, 'notificationsRx'),
      netbackRxDropped: d(br1, br0, 'rxDropped'),
      netfrontRxDropped: num(r.counters, 'rxDropped'),
      netfrontRxErrors: num(r.counters, 'rxErrors'),
      netbackTxErrors: d(bt1, bt0, 'txErrors'),
      grantCopies: d(bt1, bt0, 'grantCopies') + d(br1, br0, 'grantCopies'),
      copyHypercalls: d(bt1, bt0, 'copyHypercalls') + d(br1, br0, 'copyHypercalls'),
      grantMaps: d(bt1, bt0, 'grantMaps') + d(br1, br0, 'grantMaps'),
      persistentHits: d(bt1, bt0, 'persistentHits') + d(br1, br0, 'persistentHits'),
      netbackPasses: d(bt1, bt0, 'passes') + d(br1, br0, 'passes'),
      senderEvents: num(t.counters, 'events'),
      receiverEvents: num(r.counters, 'events'),
      senderHypercalls: Object.values(t.hypercalls).reduce((a, b) => a + b, 0),
      receiverHypercalls: Object.values(r.hypercalls).reduce((a, b) => a + b, 0),
      otherFrames: r.other,
    };
    return {
      rate: w.rate, scheduled: t.scheduled, sent: t.sent, received: r.frames, bytes: r.bytes, txMs: t.elapsedMs, rxMs: r.spanMs,
      drops: t.sent - r.frames, notifications, counters,
    };
  }

  async shutdown(): Promise<void> {
    const m = this.m;
    this.m = null;
    await m?.shutdown();
  }
}

// ---------------------------------------------------------------------------
// Baselines

const BASE_TX_MAC = '02:00:00:00:0b:01';
const BASE_RX_MAC = '02:00:00:00:0b:02';
/** messageport ingress bound: a netif tx ring's 256 slots of 4 KiB. */
const INGRESS_SLOTS = 256;

function macKeyOf(mac: string): number {
  const b = macBytes(mac);
  return ((b[0] * 256 + b[1]) * 65536 + (b[2] * 256 + b[3])) * 65536 + (b[4] * 256 + b[5]);
}

/** A relay baseline: three workers (sender, middle, receiver). */
class Relay implements NetMember {
  readonly queues = 1;
  private workers: { sender: BenchWorker; middle: BenchWorker; receiver: BenchWorker } | null = null;
  private ctl: Int32Array | null = null;
  private rings: SharedArrayBuffer[] = [];
  private runId = 0;
  private frameBytes = 0;

  constructor(readonly impl: RelayImpl, readonly mode: RelayMode) {}

  private async start(frameBytes: number): Promise<void> {
    if (this.workers && this.frameBytes === frameBytes) return;
    await this.close();
    const name = `${this.impl}-${this.mode}`;
    const [sender, middle, receiver] = await Promise.all(
      (['sender', 'middle', 'receiver'] as const).map((r) => BenchWorker.spawn(RELAY_WORKER, `${name}-${r}`, {})),
    );
    this.workers = { sender, middle, receiver };
    this.frameBytes = frameBytes;
    const base = { impl: this.impl, mode: this.mode };
    const T = 10_000;
    if (this.impl === 'messageport-relay') {
      const ctl = new SharedArrayBuffer(RELAY_CTL_BYTES);
      this.ctl = new Int32Array(ctl);
      const a = new MessageChannel();
      const b = new MessageChannel();
      const bounds = { ctl, ingressFrames: Math.max(1, Math.floor(INGRESS_SLOTS / netifSlots(frameBytes))), egressFrames: egressFrames(frameBytes) };
      await sender.call('setup', { setup: { ...base, ...bounds, role: 'sender', outPort: a.port1 } satisfies RelaySetup }, T, [a.port1]);
      await middle.call('setup', { setup: { ...base, ...bounds, role: 'middle', inPort: a.port2, outPort: b.port1 } satisfies RelaySetup }, T, [a.port2, b.port1]);
      await receiver.call('setup', { setup: { ...base, ...bounds, role: 'receiver', inPort: b.port2 } satisfies RelaySetup }, T, [b.port2]);
    } else {
      this.rings = [createRing(), createRing(egressRingBytes(frameBytes))];
      await sender.call('setup', { setup: { ...base, role: 'sender', outRing: this.rings[0] } satisfies RelaySetup }, T);
      await middle.call('setup', { setup: { ...base, role: 'middle', inRing: this.rings[0], outRing: this.rings[1] } satisfies RelaySetup }, T);
      await receiver.call('setup', { setup: { ...base, role: 'receiver', inRing: this.rings[1] } satisfies RelaySetup }, T);
    }
    // The receiver's MAC is behind the middle's egress, as pvio's bridge learns it from the receiver's hello.
    await middle.call('learn', { mac: macKeyOf(BASE_RX_MAC) }, T);
  }

  async run(w: WindowSpec): Promise<WindowResult> {
    await this.start(w.frameBytes);
    const { sender, middle, receiver } = this.workers!;
    const runId = ++this.runId;
    const deadlineMs = w.ms * 2 + 2000;
    const callMs = deadlineMs + 10_000;
    const args: RelayTxArgs = { runId, dst: BASE_RX_MAC, src: BASE_TX_MAC, frameBytes: w.frameBytes, rate: w.rate, ms: w.ms, deadlineMs: w.ms * 2 + 200 };
    let t: RelayTxResult;
    let mid: RelayMidResult;
    let r: RelayRxResult;
    if (this.impl === 'messageport-relay') {
      const ctl = this.ctl!;
      for (const k of [RELAY_CTL.TAKEN, RELAY_CTL.WAKE_AT, RELAY_CTL.RX_COUNT]) Atomics.store(ctl, k, 0);
      await middle.call('arm', { runId }, 10_000);
      await receiver.call('arm', { runId }, 10_000);
      [t, mid, r] = await Promise.all([
        sender.call<RelayTxResult>('tx', { args }, callMs),
        middle.call<RelayMidResult>('collect', { deadlineMs }, callMs),
        receiver.call<RelayRxResult>('collect', { deadlineMs }, callMs),
      ]);
    } else {
      for (const sab of this.rings) Atomics.store(new Int32Array(sab), RING.DONE, 0);
      [r, mid, t] = await Promise.all([
        receiver.call<RelayRxResult>('rx', { runId, deadlineMs }, callMs),
        middle.call<RelayMidResult>('relay', { deadlineMs }, callMs),
        sender.call<RelayTxResult>('tx', { args }, callMs),
      ]);
    }
    return {
      rate: w.rate, scheduled: t.scheduled, sent: t.sent, received: r.frames, bytes: r.bytes, txMs: t.elapsedMs, rxMs: r.spanMs,
      drops: t.sent - r.frames,
      notifications: this.impl === 'minimal-ring-relay' ? t.notifications + mid.notifications + r.notifications : null,
      counters: { middleDrops: mid.drops, middleFiltered: mid.filtered, senderBlocked: t.blocked, wakeups: mid.wakeups + r.wakeups },
    };
  }

  async close(): Promise<void> {
    const w = this.workers;
    this.workers = null;
    if (w) await Promise.all([w.sender.terminate(), w.middle.terminate(), w.receiver.terminate()]);
  }
}

// ---------------------------------------------------------------------------
// Rows, ratios, output

const keyOf = (impl: NetImpl, mode: NetMode, queues: number, frameBytes: number) => `${impl} ${mode}${impl === 'pvio' ? ` q${queues}` : ''} ${frameLabel(frameBytes)}`;
/** `64B`, `1500B`, `64KiB` (65535). */
function frameLabel(b: number): string {
  return b === 65535 ? '64KiB' : `${b}B`;
}

/** Every search of one member in one group. */
interface Outcome {
  readonly member: NetMember;
  readonly frameBytes: number;
  readonly key: string;
  readonly results: SearchResult[];
  error: string | null;
}

function summarize(o: Outcome, windowMs: number): NetRow {
  const rs = o.results;
  const floods = rs.map((r) => r.flood);
  const pps = median(floods.map((f) => deliveredPps(f, windowMs)));
  const zd = median(rs.map((r) => r.zeroDropPps));
  const sent = floods.reduce((a, f) => a + f.sent, 0);
  const received = floods.reduce((a, f) => a + f.received, 0);
  const drops = floods.reduce((a, f) => a + f.drops, 0);
  const notif = floods.every((f) => f.notifications !== null) && floods.length > 0 ? floods.reduce((a, f) => a + f.notifications!, 0) : null;
  let perPacket: Record<string, number> | undefined;
  if (o.member.impl === 'pvio' && received > 0) {
    perPacket = {};
    for (const f of floods) for (const [k, v] of Object.entries(f.counters ?? {})) perPacket[k] = (perPacket[k] ?? 0) + v;
    for (const k of Object.keys(perPacket)) perPacket[k] /= received;
  }
  return {
    impl: o.member.impl, frameBytes: o.frameBytes, mode: o.member.mode, queues: o.member.queues,
    pps, gbitPerSec: gbit(pps, o.frameBytes), offeredPps: median(floods.map(offeredPps)),
    zeroDropPps: zd, zeroDropGbitPerSec: gbit(zd, o.frameBytes),
    notificationsPerPacket: notif !== null && received > 0 ? notif / received : null,
    dropsPerPacket: sent > 0 ? drops / sent : null, drops: rs.length > 0 ? drops : null, rounds: rs.length,
    perRound: rs.map((r) => ({
      round: r.round, pps: deliveredPps(r.flood, windowMs), zeroDropPps: r.zeroDropPps, zeroDropRate: r.zeroDropRate,
      floodDrops: r.flood.drops, floodSent: r.flood.sent, windows: 1 + r.steps.length,
    })),
    ...(perPacket ? { perPacket } : {}),
    ...(o.error ? { error: o.error } : {}),
  };
}

/** Per-round zero-drop pps of an outcome, indexed by round (null where the round did not run). */
function roundZeroDrop(o: Outcome | undefined, rounds: number): Array<number | null> {
  const out: Array<number | null> = new Array(rounds).fill(null);
  for (const r of o?.results ?? []) if (r.round < rounds) out[r.round] = r.zeroDropPps;
  return out;
}

/** Per round, the larger of several members' values (null where none ran). */
function roundBest(os: Array<Outcome | undefined>, rounds: number): Array<number | null> {
  const cols = os.map((o) => roundZeroDrop(o, rounds));
  return Array.from({ length: rounds }, (_, i) => {
    const v = cols.map((c) => c[i]).filter((x): x is number => x !== null);
    return v.length > 0 ? Math.max(...v) : null;
  });
}

function computeRatios(outcomes: readonly Outcome[], rounds: number, rows: readonly NetRow[]): RatioResult[] {
  const find = (impl: NetImpl, mode: NetMode, queues: number, fb: number) =>
    outcomes.find((o) => o.member.impl === impl && o.member.mode === mode && o.member.queues === queues && o.frameBytes === fb);
  const out: RatioResult[] = [];
  const ratio = (spec: {
    id: string; kind: RatioResult['kind']; description: string; metric: string;
    num: Array<Outcome | undefined>; den: Array<Outcome | undefined>; threshold: number | null; note?: string;
  }) => {
    const numOs = spec.num.filter((x): x is Outcome => !!x);
    const denOs = spec.den.filter((x): x is Outcome => !!x);
    const base = {
      id: spec.id, kind: spec.kind, description: spec.description, metric: spec.metric,
      numerator: numOs.map((o) => o.key).join(' | ') || null, denominator: denOs.map((o) => o.key).join(' | ') || null,
      threshold: spec.threshold, comparison: spec.threshold === null ? null : ('>=' as const),
    };
    if (numOs.length === 0 || denOs.length === 0) {
      out.push({ ...base, value: null, met: null, perRound: [], note: `not measured: ${numOs.length === 0 ? 'numerator' : 'denominator'} did not run` });
      return;
    }
    const perRound = pairwiseRatios(roundBest(numOs, rounds), roundBest(denOs, rounds));
    const value = median(perRound);
    out.push({ ...base, value, met: meets(value, base.comparison, spec.threshold), perRound,
      ...(value === null ? { note: 'no complete pair of rounds' } : spec.note ? { note: spec.note } : {}) });
  };
  const mpBest = (fb: number) => [find('messageport-relay', 'copy', 1, fb), find('messageport-relay', 'transfer', 1, fb)];
  const pvioBest = (fb: number, q = 1) => [find('pvio', 'copy', q, fb), find('pvio', 'persistent', q, fb)];
  ratio({
    id: 'pvio-vs-messageport-relay/64B-zero-drop-pps', kind: 'goal', metric: 'zeroDropPps', threshold: 10,
    description: '64-byte frames, zero-drop pps: pvio (the better of copy and persistent, 1 queue, per round) ≥ 10 × the relayed MessagePort (the better of copy and transfer)',
    num: pvioBest(64), den: mpBest(64),
  });
  ratio({
    id: 'pvio-vs-messageport-relay/1500B-zero-drop-gbit', kind: 'goal', metric: 'zeroDropGbitPerSec', threshold: 2,
    description: '1500-byte frames, zero-drop Gbit/s: pvio (the better mode, 1 queue) ≥ 2 × the relayed MessagePort (the better of copy and transfer)',
    num: pvioBest(1500), den: mpBest(1500),
  });
  // Drops at the highest offered rate: reported for every row, never hidden.
  const pvioRows = rows.filter((r) => r.impl === 'pvio');
  const reported = pvioRows.length > 0 && pvioRows.every((r) => r.dropsPerPacket !== null);
  const worst = pvioRows.reduce((a, r) => Math.max(a, r.dropsPerPacket ?? 0), 0);
  out.push({
    id: 'pvio-drops-at-highest-offered-rate', kind: 'goal', metric: 'dropsPerPacket',
    description: 'drops per packet at the highest offered rate (flood) reported for every pvio row; value = the largest',
    numerator: null, denominator: null, value: pvioRows.length > 0 ? worst : null, threshold: null, comparison: null,
    met: pvioRows.length > 0 ? reported : null, perRound: [],
    note: pvioRows.map((r) => `${keyOf(r.impl, r.mode, r.queues, r.frameBytes)}: ${fmt(r.dropsPerPacket)}`).join('; ') || 'no pvio row',
  });
  const frames = [...new Set(outcomes.map((o) => o.frameBytes))].sort((a, b) => a - b);
  for (const fb of frames) {
    const L = frameLabel(fb);
    for (const mode of ['copy', 'persistent'] as const) {
      for (const q of [1, 2]) {
        const p = find('pvio', mode, q, fb);
        if (!p) continue;
        ratio({ id: `pvio-${mode}-q${q}-vs-messageport-relay/${L}`, kind: 'reference', metric: 'zeroDropPps', threshold: null,
          description: `${L}: pvio ${mode} ${q} queue(s) / the better MessagePort relay, zero-drop pps`, num: [p], den: mpBest(fb) });
        ratio({ id: `pvio-${mode}-q${q}-vs-minimal-ring-relay/${L}`, kind: 'reference', metric: 'zeroDropPps', threshold: null,
          description: `${L}: pvio ${mode} ${q} queue(s) / the minimal SAB ring relay, zero-drop pps`, num: [p], den: [find('minimal-ring-relay', 'copy', 1, fb)] });
      }
    }
    ratio({ id: `persistent-vs-copy/${L}`, kind: 'reference', metric: 'zeroDropPps', threshold: null,
      description: `${L}: pvio persistent / copy (1 queue), zero-drop pps`, num: [find('pvio', 'persistent', 1, fb)], den: [find('pvio', 'copy', 1, fb)] });
    if (find('pvio', 'persistent', 2, fb)) {
      ratio({ id: `queues-2-vs-1/${L}`, kind: 'reference', metric: 'zeroDropPps', threshold: null,
        description: `${L}: pvio 2 queues / 1 queue (the better mode each), zero-drop pps`, num: pvioBest(fb, 2), den: pvioBest(fb, 1) });
    }
    ratio({ id: `messageport-transfer-vs-copy/${L}`, kind: 'reference', metric: 'zeroDropPps', threshold: null,
      description: `${L}: MessagePort relay, transfer / copy, zero-drop pps`, num: [find('messageport-relay', 'transfer', 1, fb)], den: [find('messageport-relay', 'copy', 1, fb)] });
  }
  return out;
}

const fmt = formatSig;

/** The rows as a Markdown table. */
export function markdownNetRows(rows: readonly NetRow[]): string {
  const head = ['impl', 'mode', 'queues', 'frame', 'offered pps', 'pps', 'Gbit/s', 'zero-drop pps', 'zero-drop Gbit/s', 'drops/pkt', 'notif/pkt', 'rounds'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    lines.push(`| ${[r.impl, r.mode, r.queues, frameLabel(r.frameBytes), fmt(r.offeredPps),
      r.error && r.pps === null ? `failed: ${r.error.replace(/\|/g, '/')}` : fmt(r.pps), fmt(r.gbitPerSec), fmt(r.zeroDropPps),
      fmt(r.zeroDropGbitPerSec), fmt(r.dropsPerPacket), fmt(r.notificationsPerPacket), r.rounds].join(' | ')} |`);
  }
  return lines.join('\n');
}

function markdownRatioTable(ratios: readonly RatioResult[]): string {
  const lines = ['| kind | id | target | value | bound | met | per round |', '|---|---|---|---|---|---|---|'];
  for (const r of ratios) {
    const met = r.met === null ? '–' : r.met ? 'yes' : '**no**';
    lines.push(`| ${r.kind} | ${r.id} | ${r.description}${r.note ? ` (${r.note})` : ''} | ${fmt(r.value)} | ${r.comparison ?? ''} ${fmt(r.threshold)} | ${met} | ${r.perRound.map((x) => fmt(x)).join(' ')} |`);
  }
  return lines.join('\n');
}

/** Chart lines: zero-drop pps against frame size, one line per implementation and variant; pvio solid, baselines dashed. */
function chartSeries(rows: readonly NetRow[]): ChartSeries[] {
  const lines = new Map<string, { dashed: boolean; pts: Array<{ x: number; y: number }> }>();
  for (const r of rows) {
    if (r.zeroDropPps === null || r.zeroDropPps <= 0) continue;
    const label = r.impl === 'pvio' ? `pvio ${r.mode} ${r.queues}q` : `${r.impl} ${r.mode}`;
    let l = lines.get(label);
    if (!l) lines.set(label, l = { dashed: r.impl !== 'pvio', pts: [] });
    l.pts.push({ x: r.frameBytes, y: r.zeroDropPps });
  }
  return [...lines].map(([label, l]) => ({ label, dashed: l.dashed, points: l.pts.sort((a, b) => a.x - b.x) }))
    .sort((a, b) => Number(a.dashed) - Number(b.dashed) || a.label.localeCompare(b.label));
}

// ---------------------------------------------------------------------------
// The run

/**
 * Runs `bench net` with the arguments after `bench net`; prints the Markdown tables
 * on stdout and progress on stderr.
 * @returns the exit code: 0; 1 when a member failed or an output could not be
 *   written; 2 for bad arguments.
 */
export async function benchNet(argv: string[]): Promise<number> {
  const o = benchOptionsOrExit(argv, parseBenchNetArgs, BENCH_NET_USAGE, 'net');
  if (typeof o === 'number') return o;
  const t0 = performance.now();
  const elapsed = () => `+${((performance.now() - t0) / 1000).toFixed(0)}s`;
  const log = (line: string) => process.stderr.write(`bench net: ${line}\n`);
  const machine = machineInfo();
  const notes: string[] = [];
  const note = (s: string) => {
    notes.push(s);
    log(s);
  };
  const tokens = SpinTokens.createBuffer(o.spinTokens);
  const pvio = new PvioNet(tokens, log);
  const members: NetMember[] = [];
  const relays: Relay[] = [];
  const outcomes: Outcome[] = [];
  const skippedGroups: string[] = [];
  let exit = 0;
  const variants: Array<['copy' | 'persistent', number]> = [['copy', 1], ['persistent', 1], ...(o.queues2 ? [['copy', 2], ['persistent', 2]] as Array<['copy' | 'persistent', number]> : [])];
  log(`${o.frames.length} frame sizes × (${variants.length} pvio variants + 3 baselines), ${o.rounds} rounds, ` +
    `${o.windowMs} ms windows, 1 flood + ≤ ${o.steps} paced windows per search`);
  try {
    await pvio.boot();
    for (const [mode, q] of variants) {
      if (o.only !== null && !o.frames.some((fb) => keyOf('pvio', mode, q, fb).includes(o.only!))) continue;
      try {
        members.push(await pvio.pair(mode, q));
      } catch (e) {
        note(`pvio ${mode} q${q}: could not be set up: ${(e as Error).message}`);
        exit = 1;
      }
    }
    log(`${elapsed()} machine up, ${members.length} guest pairs`);
    for (const [impl, mode] of [['messageport-relay', 'copy'], ['messageport-relay', 'transfer'], ['minimal-ring-relay', 'copy']] as const) {
      const r = new Relay(impl, mode);
      relays.push(r);
      members.push(r);
    }
    const warmed = new Set<string>();
    for (const fb of o.frames) {
      if (performance.now() - t0 > o.budgetS * 1000) {
        skippedGroups.push(frameLabel(fb));
        continue;
      }
      const outs = members.map((m): Outcome => ({ member: m, frameBytes: fb, key: keyOf(m.impl, m.mode, m.queues, fb), results: [], error: null }))
        .filter((x) => o.only === null || x.key.includes(o.only));
      outcomes.push(...outs);
      for (let round = 0; round < o.rounds; round++) {
        for (const x of outs) {
          if (x.error) continue;
          try {
            // Warm-up: a short flood (the first of a member at this size: 4× longer, a cold JIT).
            const wk = x.key;
            await x.member.run({ frameBytes: fb, rate: 0, ms: warmed.has(wk) ? o.warmupMs : o.warmupMs * 4 });
            warmed.add(wk);
            log(`${elapsed()} [${frameLabel(fb)} r${round + 1}] ${x.key}`);
            const res = await searchZeroDrop(x.member, fb, o, round, log);
            x.results.push(res);
            log(`  → zero-drop ${fmt(res.zeroDropPps)} pps (${fmt(gbit(res.zeroDropPps, fb))} Gbit/s)`);
          } catch (e) {
            x.error = (e as Error)?.message ?? String(e);
            log(`${elapsed()} [${frameLabel(fb)} r${round + 1}] ${x.key}: FAILED ${x.error}`);
          }
        }
      }
    }
  } catch (e) {
    note(`bench aborted: ${(e as Error)?.stack ?? e}`);
    exit = 1;
  } finally {
    for (const r of relays) await r.close().catch(() => undefined);
    await pvio.shutdown().catch((e) => note(`machine shutdown: ${(e as Error).message}`));
    const back = await restoreSpinTokens(tokens, o.spinTokens);
    if (back > 0) note(`${back} spin token(s) were not returned; returned`);
  }
  if (skippedGroups.length > 0) note(`time budget (${o.budgetS} s) ran out: skipped frame sizes ${skippedGroups.join(', ')}`);

  const measured = outcomes.filter((x) => x.results.length > 0 || x.error);
  const rows = measured.map((x) => summarize(x, o.windowMs));
  if (rows.some((r) => r.error)) exit = 1;
  const ratios = computeRatios(measured, o.rounds, rows);
  const durationMs = performance.now() - t0;
  const report: NetReport = {
    machine,
    config: {
      command: 'pvio bench net', argv, quick: o.quick, rounds: o.rounds, windowMs: o.windowMs, steps: o.steps, warmupMs: o.warmupMs,
      budgetS: o.budgetS, frames: o.frames, spinTokens: o.spinTokens,
      pvio: {
        variants: variants.map(([m, q]) => `${m} q${q}`), negotiated: pvio.negotiated,
        topology: 'two guests (1 vCPU per queue, 64 MiB) with one vif each on their own dom0 bridge; dom0 1 vCPU; the hypervisor a fourth thread',
        gso: 'frames over the MTU are sent with a GSO extra-info slot (XEN_NETIF_GSO_TYPE_TCPV4, MSS = MTU − 40), answered NETIF_RSP_NULL',
        rings: 'netif tx and rx rings of one page (256 slots) per queue; netback rx queue 512 KiB of frames (at least 1000 frames, at most 8192); netfront rx queue 4096 frames',
      },
      baselines: {
        'messageport-relay': `sender → middle → receiver over two MessageChannels; copy: Uint8Array cloned per hop; transfer: a fresh ArrayBuffer per frame, transferred per hop; ingress ≤ ${INGRESS_SLOTS} slots of 4 KiB untaken (sender blocks), egress ≤ what netback buffers for a guest (rx queue + 256-slot ring: ${[64, 1500, 65535].map((b) => `${egressFrames(b)} frames of ${b} B`).join(', ')}) unconsumed (middle drops)`,
        'minimal-ring-relay': `two SPSC byte rings in SharedArrayBuffers (length-prefixed records, Atomics.wait/notify with a waiting flag, no spinning): sender → middle 1 MiB (the sender blocks when full), middle → receiver room for as many frames as netback buffers (as above), ≥ 1 MiB (the middle drops when full); the receiver copies each frame out`,
      },
      search: 'flood window, then paced windows: 0.95 × flood delivered rate, ×0.75 down until a pass, then bisection (upper bound 1.2 × flood delivered); pass = 0 drops and every frame sent within 5% + 2 ms of the window',
      pacing: 'frame n due at t0 + n/rate; due frames sent back to back, then sleep ≥ 1 ms (pvio: Node timer; baselines: Atomics.wait)',
      units: { pps: 'packets per second', gbitPerSec: '1e9 bit/s of Ethernet frame bytes', frameBytes: 'bytes, Ethernet header included' },
    },
    rows, ratios, searches: measured.map((x) => ({ key: x.key, results: x.results })), durationMs, notes,
  };

  const out = [
    '## pvio bench net', '',
    `${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, ${machine.platform} ${machine.kernel}, loadavg ${machine.loadavg.join(' ')}. ` +
    `${o.rounds} rounds; per member and round a ${o.windowMs} ms flood window and ≤ ${o.steps} paced windows searching the zero-drop rate. ` +
    'pps / Gbit/s / drops: the flood (highest offered rate); zero-drop: the highest paced rate with no drop. Ratios are medians of per-round ratios.', '',
    markdownNetRows(rows), '', '### Goals and comparisons', '', markdownRatioTable(ratios), '',
    ...notes.map((n) => `- note: ${n}`),
    `- duration: ${(durationMs / 1000).toFixed(1)} s`, '',
  ];
  process.stdout.write(out.join('\n'));
  try {
    if (o.json) writeJsonReport(o.json, report);
    if (o.svg) {
      const svg = svgChart(chartSeries(rows), `pvio bench net: zero-drop packets/s vs frame size (Node ${machine.node}, ${machine.cpus} CPUs)`,
        'solid: pvio (data path, queues); dashed: MessagePort relay and minimal SAB ring relay; sender → switch → receiver')
        .replace('>requests in flight<', '>frame size, bytes (log scale)<')
        .replace('>operations per second<', '>zero-drop packets per second<');
      writeFileSync(o.svg, svg);
    }
  } catch (e) {
    process.stderr.write(`pvio bench net: cannot write output: ${(e as Error).message}\n`);
    exit = 1;
  }
  return exit;
}

// `npx tsx bench/net.ts [options]` runs it directly.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  benchNet(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
