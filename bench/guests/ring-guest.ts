/**
 * The guest behind pvio's ring benchmark and the ring stress test: two of these run
 * in two domains, one as the frontend (it initialises a blkif ring of 1–16 pages in
 * one extent, grants it and allocates the event channel) and one as the backend (it
 * maps the ring with `mapRing` and binds the channel), exactly as blkfront/blkback
 * do, minus the storage.
 *
 * A run is a tight synchronous loop on each side (blocking the vCPU's event loop,
 * like Linux's polled I/O): the frontend keeps up to `depth` requests in flight,
 * publishing `batch` at a time (or a random 1..batch with `randomBatch`), each a
 * 112-byte `blkif_request` whose id is its sequence number; the backend copies each
 * request out once, checks that ids arrive in sequence and that the payload matches,
 * and answers a 16-byte `blkif_response`, publishing after each pass. Both sides
 * notify only when the event-index rule says so, and wait per `mode`:
 * - `poll`: spin on the ring (holding a spin token for the run; without one, block);
 * - `block`: final check, then sleep on the event channel;
 * - `adaptive`: spin briefly on the ring (with a spin token, event index unarmed),
 *   then final check and sleep on the event channel.
 * A sentinel request (operation {@link OP_STOP}) ends the backend's loop.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { EvtchnPort, GrantHandle, GrantRef } from '../../hypervisor/abi.ts';
import type { WaitMode } from '../../event-channel/evtchn.ts';
import { FrontRing, BackRing } from '../../rings/ring.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';
import {
  BLKIF_OP_READ, BLKIF_REQUEST, BLKIF_RESPONSE, BLKIF_RING_ENTRY_SIZE, readBlkifRequest, readBlkifResponse, writeBlkifRequest,
  writeBlkifResponse, type BlkifRequest, type BlkifResponse,
} from '../../rings/blkif.ts';
import { xorshift32 } from '../../toolstack/xorshift.ts';

/** Bench-only operation code that stops the backend's loop (not a blkif op). */
export const OP_STOP = 0xfe;
/** Ring polls in adaptive mode before arming the event index and sleeping (~10–20 µs). */
const ADAPTIVE_RING_SPINS = 2000;
/** Longest a side waits for its peer before it declares the run failed (ms). */
const PEER_DEADLINE_MS = 10_000;

/** One run's parameters. */
export interface RingRunConfig {
  readonly mode: WaitMode;
  /** Most requests in flight (≤ ring size). */
  readonly depth: number;
  /** Requests produced per publish (upper bound when `randomBatch`). */
  readonly batch: number;
  readonly randomBatch?: boolean;
  /** Stop after this many requests (count mode) ... */
  readonly count?: number;
  /** ... or after this long (ms) of measurement, after `warmupMs`. */
  readonly measureMs?: number;
  readonly warmupMs?: number;
  /** One request in `sampleEvery` is timed for the round-trip latency sample. */
  readonly sampleEvery?: number;
  readonly seed?: number;
}

/** What the frontend reports for a run. */
export interface RingRunResult {
  /** Requests completed in the measured window. */
  readonly ops: number;
  /** Length of the measured window, ns. */
  readonly elapsedNs: number;
  /** Sampled round-trip times, ns. */
  readonly rttNs: number[];
  /** Notifications the frontend sent / sleeps it took / spins that caught an event. */
  readonly notifications: number;
  readonly sleeps: number;
  readonly spinHits: number;
  /** Responses whose id was not the next expected, or whose status was not OKAY. */
  readonly errors: number;
  /** Total requests completed (warm-up included). */
  readonly total: number;
  /** Wake-ups by notification in the window (the frontend's). */
  readonly wakeups: number;
  /** Sequence numbers of the first and last response counted in the window (-1 if none). */
  readonly firstSeq: number;
  readonly lastSeq: number;
  /** Process-wide CPU time over the window, µs (`process.cpuUsage()` is process-wide in any thread). */
  readonly cpuUs: number;
}

/** What the backend reports when its loop ends. */
export interface RingServeResult {
  readonly served: number;
  readonly notifications: number;
  readonly sleeps: number;
  readonly spinHits: number;
  /** Requests that arrived out of sequence or with a corrupted payload. */
  readonly seqErrors: number;
  readonly wakeups: number;
  /**
   * Checkpoints every {@link CHECKPOINT_EVERY} requests: `[seq, notifications, wakeups]`
   * cumulated since the serve began, so a window given by sequence numbers can be
   * measured on the backend's side too.
   */
  readonly checkpoints: number[];
}

/** Requests between two backend checkpoints. */
export const CHECKPOINT_EVERY = 64;

/** The payload check value both sides derive from a sequence number. */
const sectorOf = (seq: number) => (seq * 8) % 2 ** 40;

interface Front {
  ring: FrontRing;
  port: EvtchnPort;
  nextSeq: number;
}
interface Back {
  ring: BackRing;
  port: EvtchnPort;
  handles: GrantHandle[];
  expect: number;
}

export default function main(k: Kernel): Promise<unknown> {
  const ctl = k.control!;
  let front: Front | null = null;
  let back: Back | null = null;
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));

  /** Waits until `ready()` is true, per mode; false when the peer is silent past the deadline. */
  const waitFor = (port: EvtchnPort, mode: WaitMode, ready: () => boolean, finalCheck: () => boolean, st: { sleeps: number; spinHits: number; wakeups: number }): boolean => {
    if (mode === 'poll') {
      const t0 = performance.now();
      for (let i = 0; ; i++) {
        if (ready()) return true;
        if ((i & 0xfff) === 0 && performance.now() - t0 > PEER_DEADLINE_MS) return false;
      }
    }
    if (mode === 'adaptive' && k.spin.tryAcquire()) {
      // Spin on the ring itself first, with the event index left unarmed: a peer that
      // answers within the spin sends no notification at all. Only then arm and sleep.
      try {
        for (let i = 0; i < ADAPTIVE_RING_SPINS; i++) {
          if (ready()) {
            st.spinHits++;
            return true;
          }
        }
      } finally {
        k.spin.release();
      }
    }
    if (finalCheck()) return true;
    const c = k.evtchn.counters;
    const before = { s: c.sleeps, h: c.spinHits, w: c.wakeups };
    const got = k.evtchn.waitSync(port, mode === 'adaptive' ? 'block' : mode, PEER_DEADLINE_MS);
    st.sleeps += c.sleeps - before.s;
    st.spinHits += c.spinHits - before.h;
    st.wakeups += c.wakeups - before.w;
    return got || ready();
  };

  const ops: Record<string, (a: any) => unknown> = {
    /** Frontend: allocate and initialise a ring of 2^order pages, grant it, allocate the port. */
    setupFront: (a: { order: number; backend: number; startIdx?: number }) => {
      const ext = k.memory.allocExtent(a.order);
      const ring = FrontRing.init(ext.bytes, BLKIF_RING_ENTRY_SIZE, a.startIdx ?? 0);
      const refs: GrantRef[] = [];
      for (let i = 0; i < 1 << a.order; i++) refs.push(k.gnttab.grantAccess(a.backend, ext.mfn + i, false));
      const port = k.evtchn.allocUnbound(a.backend);
      front = { ring, port, nextSeq: 0 };
      return { refs, port, size: ring.size };
    },
    /** Backend: map the ring (consecutive pages of one extent) and bind the port. */
    setupBack: (a: { front: number; refs: GrantRef[]; port: number; startIdx?: number }) => {
      const { handles, bytes } = k.gnttab.mapRing(a.front, a.refs);
      const port = k.evtchn.bindInterdomain(a.front, a.port);
      back = { ring: BackRing.attach(bytes, BLKIF_RING_ENTRY_SIZE, a.startIdx ?? 0), port, handles, expect: 0 };
      return { size: back.ring.size };
    },
    /** Backend: serve until the stop sentinel. */
    serve: (a: { mode: WaitMode; batch?: number }): RingServeResult => {
      const b = back!;
      const ring = b.ring;
      const copy = new Uint8Array(BLKIF_RING_ENTRY_SIZE);
      const cdv = new DataView(copy.buffer);
      const req: BlkifRequest = { operation: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, segments: [] };
      const rsp: BlkifResponse = { id: 0, operation: 0, status: 0 };
      const rspBuf = new Uint8Array(BLKIF_RESPONSE.size); // built here, copied into the slot once
      const rspDv = new DataView(rspBuf.buffer);
      const st = { sleeps: 0, spinHits: 0, wakeups: 0 };
      const checkpoints: number[] = [];
      const pushEvery = a.batch ?? Infinity;
      let served = 0;
      let notifications = 0;
      let seqErrors = 0;
      const push = () => {
        if (ring.pushResponsesAndCheckNotify()) {
          notifications++;
          k.evtchn.notify(b.port);
        }
      };
      const token = a.mode === 'poll' && k.spin.tryAcquire();
      const mode: WaitMode = a.mode === 'poll' && !token ? 'block' : a.mode;
      try {
        for (;;) {
          let n = ring.unconsumedRequests();
          if (n === 0) {
            if (!waitFor(b.port, mode, () => ring.unconsumedRequests() > 0, () => ring.finalCheckForRequests(), st)) {
              throw new Error(`backend: no request for ${PEER_DEADLINE_MS} ms`);
            }
            continue;
          }
          let stop = false;
          while (n-- > 0) {
            ring.consumeRequest(copy);
            readBlkifRequest(cdv, 0, req);
            if (req.operation === OP_STOP) stop = true;
            else if (req.id !== b.expect || req.sectorNumber !== sectorOf(req.id)) seqErrors++;
            b.expect = req.id + 1;
            rsp.id = req.id;
            rsp.operation = req.operation;
            rsp.status = 0;
            writeBlkifResponse(rspDv, 0, rsp);
            ring.produceResponseFrom(rspBuf);
            served++;
            if (req.id % CHECKPOINT_EVERY === 0) checkpoints.push(req.id, notifications, st.wakeups);
            if (served % pushEvery === 0) push();
          }
          push(); // publishes what a `batch` boundary left unpublished (a no-op otherwise)
          if (stop) break;
        }
      } finally {
        if (token) k.spin.release();
      }
      return { served, notifications, sleeps: st.sleeps, spinHits: st.spinHits, seqErrors, wakeups: st.wakeups, checkpoints };
    },
    /** Frontend: one run (count- or time-bounded), then the stop sentinel if `stop`. */
    run: (a: RingRunConfig & { stop?: boolean }): RingRunResult => {
      const f = front!;
      const ring = f.ring;
      const depth = Math.min(a.depth, ring.size);
      const sampleEvery = a.sampleEvery ?? 64;
      const rand = xorshift32(a.seed ?? 1);
      // Send times of sampled requests, by (seq / sampleEvery) modulo the table size.
      const sentAt = new Float64Array(1024).fill(-1);
      const rttNs: number[] = [];
      const copy = new Uint8Array(BLKIF_RESPONSE.size); // responses are copied out once, 16 bytes
      const cdv = new DataView(copy.buffer);
      const reqBuf = new Uint8Array(BLKIF_REQUEST.size); // requests are built here, copied into the slot once
      const reqDv = new DataView(reqBuf.buffer);
      const rsp: BlkifResponse = { id: 0, operation: 0, status: 0 };
      const req: BlkifRequest = { operation: BLKIF_OP_READ, nrSegments: 1, handle: 0, id: 0, sectorNumber: 0, segments: [{ gref: 0, firstSect: 0, lastSect: 7 }] };
      const st = { sleeps: 0, spinHits: 0, wakeups: 0 };
      let firstSeq = -1;
      let lastSeq = -1;
      let cpu0 = process.cpuUsage();
      let cpuUs = 0;
      let inFlight = 0;
      let completed = 0;
      let errors = 0;
      let notifications = 0;
      let expect = f.nextSeq;
      const runStartSeq = f.nextSeq;
      const token = a.mode === 'poll' && k.spin.tryAcquire();
      const mode: WaitMode = a.mode === 'poll' && !token ? 'block' : a.mode;
      const t0 = performance.now();
      const warmEnd = t0 + (a.warmupMs ?? 0);
      const end = a.measureMs !== undefined ? warmEnd + a.measureMs : Infinity;
      let measuring = (a.warmupMs ?? 0) === 0;
      let mStart = measuring ? t0 : 0;
      let mOps = 0;
      let mEnd = 0;
      const produce = (op: number) => {
        const seq = f.nextSeq++;
        req.operation = op;
        req.id = seq;
        req.sectorNumber = sectorOf(seq);
        req.segments[0].gref = seq & 0xffff;
        writeBlkifRequest(reqDv, 0, req);
        ring.produceRequestFrom(reqBuf);
        if (seq % sampleEvery === 0) sentAt[(seq / sampleEvery) & 1023] = performance.now();
      };
      const publish = () => {
        if (ring.pushRequestsAndCheckNotify()) {
          notifications++;
          k.evtchn.notify(f.port);
        }
      };
      try {
        let iter = 0;
        for (;;) {
          // The clock is read every 16 loop passes (responses arrive in chunks, so a
          // cadence on `completed` could skip the window's edges).
          const now = (iter++ & 15) === 0 ? performance.now() : 0;
          if (now) {
            if (!measuring && now >= warmEnd) {
              measuring = true;
              mStart = now;
              mOps = 0;
              rttNs.length = 0;
              st.sleeps = 0;
              st.spinHits = 0;
              st.wakeups = 0;
              notifications = 0;
              cpu0 = process.cpuUsage();
            }
            if (now >= end && !mEnd) {
              mEnd = now;
              const c = process.cpuUsage(cpu0);
              cpuUs = c.user + c.system;
            }
          }
          const wantMore = a.count !== undefined ? f.nextSeq - runStartSeq < a.count : !mEnd;
          // Produce up to one batch.
          if (wantMore && inFlight < depth) {
            let n = a.randomBatch ? 1 + (rand() % a.batch) : a.batch;
            n = Math.min(n, depth - inFlight, ring.freeRequests());
            if (a.count !== undefined) n = Math.min(n, a.count - (f.nextSeq - runStartSeq));
            if (n > 0) {
              for (let i = 0; i < n; i++) produce(BLKIF_OP_READ);
              inFlight += n;
              publish();
            }
          }
          // Consume responses.
          let r = ring.unconsumedResponses();
          if (r === 0) {
            if (inFlight === 0 && !wantMore) break;
            if (inFlight < depth && wantMore) continue; // room to produce more first
            // With the whole ring in flight nothing can be produced until responses free
            // slots, so ask to be woken once for all of them (ring.h's custom batching:
            // rsp_event = rsp_cons + N) rather than at the first response.
            const arm = inFlight === ring.size ? inFlight : 1;
            if (!waitFor(f.port, mode, () => ring.unconsumedResponses() > 0, () => ring.finalCheckForResponses(arm), st)) {
              throw new Error(`frontend: no response for ${PEER_DEADLINE_MS} ms (${inFlight} in flight)`);
            }
            continue;
          }
          while (r-- > 0) {
            ring.consumeResponse(copy, BLKIF_RESPONSE.size);
            readBlkifResponse(cdv, 0, rsp);
            if (rsp.id !== expect || rsp.status !== 0) errors++;
            expect = rsp.id + 1;
            if (rsp.id % sampleEvery === 0) {
              const slot = (rsp.id / sampleEvery) & 1023;
              const ts = sentAt[slot];
              sentAt[slot] = -1;
              if (ts >= 0 && measuring && !mEnd) rttNs.push((performance.now() - ts) * 1e6);
            }
            inFlight--;
            completed++;
            if (measuring && !mEnd) {
              mOps++;
              if (firstSeq < 0) firstSeq = rsp.id;
              lastSeq = rsp.id;
            }
          }
        }
        if (!mEnd) {
          mEnd = performance.now();
          const c = process.cpuUsage(cpu0);
          cpuUs = c.user + c.system;
        }
        if (a.stop) {
          produce(OP_STOP);
          publish();
          // Wait for the sentinel's response so the backend's loop has ended.
          while (ring.unconsumedResponses() === 0) {
            if (!waitFor(f.port, mode === 'poll' ? 'poll' : mode, () => ring.unconsumedResponses() > 0, () => ring.finalCheckForResponses(), st)) break;
          }
          while (ring.unconsumedResponses() > 0) ring.consumeResponse(copy, BLKIF_RESPONSE.size);
        }
      } finally {
        if (token) k.spin.release();
      }
      return {
        ops: mOps, elapsedNs: (mEnd - mStart) * 1e6, rttNs, notifications, sleeps: st.sleeps, spinHits: st.spinHits, errors,
        total: completed, wakeups: st.wakeups, firstSeq, lastSeq, cpuUs,
      };
    },
    /** Either side: wait idle (adaptive) for `ms` with nothing arriving; reports sleeps. */
    idle: (a: { ms: number }) => {
      const port = (front ?? back)!.port;
      const c = k.evtchn.counters;
      const before = { s: c.sleeps, w: c.wakeups };
      const got = k.evtchn.waitSync(port, 'adaptive', a.ms);
      return { gotEvent: got, sleeps: c.sleeps - before.s, wakeups: c.wakeups - before.w };
    },
    counters: () => ({ evtchn: { ...k.evtchn.counters }, spin: { ...k.spin.counters } }),
    exit: () => finish(null),
  };

  // Runs are synchronous: the reply goes out when the loop ends.
  serveCalls(ctl, ops);
  return done;
}
