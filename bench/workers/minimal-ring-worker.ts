/**
 * The floor: a minimal hand-written Xen-style ring over a SharedArrayBuffer, with
 * no pvio framework code on the data path. Both ends of `bench/minimal-ring.ts`
 * run here (role `front` drives and measures, role `back` answers).
 *
 * Per request it does what a blkif split driver must do and nothing more: the
 * frontend writes a whole 112-byte `blkif_request` into the slot (a private
 * template with `id` and `sector_number` updated, copied in with one `set`); the
 * backend copies the 112-byte slot out once, reads `operation` and `id` from its
 * copy, and writes a 16-byte `blkif_response` (every byte, padding included) into
 * the same slot; the frontend copies the 16 bytes out and checks the id.
 *
 * Shared memory, after `io/ring.h` (offsets from the pvio layout tables, which
 * mirror the C structs; the code below uses none of pvio's ring code):
 * ```
 *   byte 0      4          8         12          64
 *   | req_prod | req_event | rsp_prod | rsp_event | ... | ring[0..size-1] (112 B each)
 *     [front]    [back]      [back]     [front]
 * ```
 * Event channels are two Int32 "pending" words in the control block
 * (`bench/workers/common.ts`): notify = `store 1` + `Atomics.notify`; a sleeper
 * waits on 0 and clears the word after it wakes.
 *
 * Notification follows Xen's event-index rule: after publishing `new` over `old`,
 * notify iff `(new - event) < (new - old)` as u32. Before sleeping, an end arms its
 * event index at `cons + 1` and re-reads the producer index (the final check).
 * JS Atomics are sequentially consistent, so each `Atomics.store`/`load` pair
 * below gives the `xen_wmb`/`xen_rmb`/`xen_mb` ordering io/ring.h asks for.
 *
 * Wait modes: `poll` spins on the producer index for the whole run (holding a spin
 * token); `block` arms the event and sleeps at once; `adaptive` spins up to
 * `DEFAULT_SPIN_ITERATIONS` loads while a token is free, then arms and sleeps.
 * Every sleep is at most `WAIT_SLICE_MS` long and every loop has a deadline.
 */
import { SpinTokens, DEFAULT_SPIN_ITERATIONS } from '../../hypervisor/spin.ts';
import { SRING_HEADER, SRING_RING_OFFSET } from '../../rings/ring.ts';
import { BLKIF_OP_READ, BLKIF_REQUEST, BLKIF_RESPONSE, BLKIF_RING_ENTRY_SIZE, BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_REQUEST_SEGMENT } from '../../rings/blkif.ts';
import {
  CTL, PHASE_STOP, WAIT_SLICE_MS, POLL_CHECK_MASK, RunWindow, acquireSpinToken, cpuUs, serve, takeSamples,
  type DriverResult, type WorkerRequest,
} from './common.ts';

/** Word indices of the shared header (from `SRING_HEADER`, C `struct <name>_sring`). */
export const MR_REQ_PROD = SRING_HEADER.fields.req_prod.offset >> 2;
/** `req_event`, written by the back end. */
export const MR_REQ_EVENT = SRING_HEADER.fields.req_event.offset >> 2;
/** `rsp_prod`, written by the back end. */
export const MR_RSP_PROD = SRING_HEADER.fields.rsp_prod.offset >> 2;
/** `rsp_event`, written by the front end. */
export const MR_RSP_EVENT = SRING_HEADER.fields.rsp_event.offset >> 2;
/** Byte offset of `ring[0]` (64). */
export const MR_RING_OFFSET = SRING_RING_OFFSET;
/** Slot stride (112 bytes: the blkif request/response union). */
export const MR_ENTRY = BLKIF_RING_ENTRY_SIZE;

// Field offsets inside a slot, from the blkif layout tables.
const REQ_OPERATION = BLKIF_REQUEST.fields.operation.offset;
const REQ_NR_SEGMENTS = BLKIF_REQUEST.fields.nr_segments.offset;
const REQ_ID = BLKIF_REQUEST.fields.id.offset;
const REQ_SECTOR = BLKIF_REQUEST.fields.sector_number.offset;
const REQ_SEG = BLKIF_REQUEST.fields.seg.offset;
const SEG_GREF = BLKIF_REQUEST_SEGMENT.fields.gref.offset;
const SEG_LAST_SECT = BLKIF_REQUEST_SEGMENT.fields.last_sect.offset;
const RSP_ID = BLKIF_RESPONSE.fields.id.offset;
const RSP_OPERATION = BLKIF_RESPONSE.fields.operation.offset;
const RSP_STATUS = BLKIF_RESPONSE.fields.status.offset;
/** Padding byte between `operation` (u8) and `status` (i16). */
const RSP_PAD_A = RSP_OPERATION + 1;
/** Trailing padding after `status`: 4 bytes to sizeof 16. */
const RSP_PAD_B = RSP_STATUS + 2;
if (RSP_PAD_A !== RSP_STATUS - 1 || RSP_PAD_B + 4 !== BLKIF_RESPONSE.size) {
  throw new Error('minimal ring: blkif_response padding is not where this bench expects it');
}
const RSP_BYTES = BLKIF_RESPONSE.size;
const REQ_BYTES = BLKIF_REQUEST.size;

/**
 * Initialises a fresh ring header the way `SHARED_RING_INIT` does: producer indices
 * 0, event indices 1. Called by the main thread before it hands the buffer out.
 */
export function initMinimalRing(ring: SharedArrayBuffer): void {
  const h = new Int32Array(ring, 0, MR_RING_OFFSET >> 2);
  Atomics.store(h, MR_REQ_EVENT, 1);
  Atomics.store(h, MR_RSP_EVENT, 1);
  Atomics.store(h, MR_REQ_PROD, 0);
  Atomics.store(h, MR_RSP_PROD, 0);
}

/** Idle-probe states of the front end: not an idle probe, draining the last responses, timing the silence. */
const IDLE_NO = 0, IDLE_DRAINING = 1, IDLE_MEASURING = 2;

/** Arguments of a run, as the main thread sends them (the worker adds its spin-token buffer). */
export interface MinimalRingArgs {
  ring: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  entries: number;
  inFlight: number;
  batch: number;
  waitMode: 'poll' | 'block' | 'adaptive';
  warmupMs: number;
  measureMs: number;
  timeoutMs: number;
  /** Idle probe: after the warm-up traffic, stop sending and measure `idleMs` of silence instead. */
  idleMs?: number;
  rttSampleMask: number;
  maxSamples: number;
}

/** A run's arguments inside the worker. */
type MinimalRingRun = MinimalRingArgs & { spinTokens: SharedArrayBuffer };

/** What the driver returns from an idle probe. */
export interface IdleReply {
  idleMs: number;
  cpuUs: number;
  wakeups: number;
}

/** Arguments common to both ends, decoded once. */
function setup(a: MinimalRingRun) {
  const size = a.entries;
  if ((size & (size - 1)) !== 0 || size * MR_ENTRY + MR_RING_OFFSET > a.ring.byteLength) {
    throw new Error(`minimal ring: ${size} entries do not fit ${a.ring.byteLength} bytes`);
  }
  if (!(a.inFlight >= 1 && a.inFlight <= size && a.batch >= 1 && a.batch <= a.inFlight)) {
    throw new Error(`minimal ring: bad inFlight ${a.inFlight} / batch ${a.batch} for ${size} entries`);
  }
  const slots: Uint8Array[] = [];
  for (let i = 0; i < size; i++) slots.push(new Uint8Array(a.ring, MR_RING_OFFSET + i * MR_ENTRY, MR_ENTRY));
  return {
    size, mask: size - 1,
    hdr: new Int32Array(a.ring, 0, MR_RING_OFFSET >> 2),
    dv: new DataView(a.ring),
    ctl: new Int32Array(a.ctl),
    slots,
  };
}

/**
 * The frontend: keeps `inFlight` requests outstanding, publishes every `batch`,
 * consumes responses, samples RTTs, and times the window.
 */
function runFront(a: MinimalRingRun): DriverResult | IdleReply {
  const { size, mask, hdr, ctl, slots } = setup(a);
  const tokens = new SpinTokens(a.spinTokens);
  const W = a.inFlight, B = a.batch, mode = a.waitMode;
  const sampleMask = a.rttSampleMask;
  const req = new Uint8Array(REQ_BYTES);
  const reqDv = new DataView(req.buffer);
  reqDv.setUint8(REQ_OPERATION, BLKIF_OP_READ);
  reqDv.setUint8(REQ_NR_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST);
  for (let s = 0; s < BLKIF_MAX_SEGMENTS_PER_REQUEST; s++) {
    reqDv.setUint32(REQ_SEG + s * BLKIF_REQUEST_SEGMENT.size + SEG_GREF, 100 + s, true);
    reqDv.setUint8(REQ_SEG + s * BLKIF_REQUEST_SEGMENT.size + SEG_LAST_SECT, 7);
  }
  const rsp = new Uint8Array(RSP_BYTES);
  const rspDv = new DataView(rsp.buffer);
  const rspSlots = slots.map((s) => s.subarray(0, RSP_BYTES));
  const sentAt = new Float64Array(size);
  const samples = new Float64Array(a.maxSamples);
  let nSamples = 0;

  const win = new RunWindow(a.warmupMs, a.measureMs, a.timeoutMs);
  if (mode === 'poll') acquireSpinToken(tokens, win.start + 1000, 'minimal-ring front');
  let reqProdPvt = 0, pushed = 0, rspCons = 0, completed = 0;
  let notifications = 0, wakeups = 0;
  let m0ops = 0, m0cpu = 0, m0notify = 0, m0wake = 0, m0t = 0;
  let idle = IDLE_NO, i0t = 0, i0cpu = 0, i0wake = 0;
  let result: DriverResult | IdleReply | null = null;
  let iter = 0;
  try {
    for (;;) {
      // Produce up to the window, publishing every B requests.
      if (idle === IDLE_NO) {
        while (((reqProdPvt - rspCons) >>> 0) < W) {
          const slot = reqProdPvt & mask;
          reqDv.setUint32(REQ_ID, reqProdPvt, true);
          reqDv.setUint32(REQ_SECTOR, reqProdPvt << 3, true);
          if ((reqProdPvt & sampleMask) === 0) sentAt[slot] = performance.now();
          slots[slot].set(req);
          reqProdPvt = (reqProdPvt + 1) >>> 0;
          if (((reqProdPvt - pushed) >>> 0) >= B) {
            // xen_wmb: the slots above must be visible before req_prod moves (SeqCst store).
            const old = pushed;
            Atomics.store(hdr, MR_REQ_PROD, reqProdPvt | 0);
            pushed = reqProdPvt;
            // xen_mb: req_prod is published before we read req_event.
            const ev = Atomics.load(hdr, MR_REQ_EVENT) >>> 0;
            if (((reqProdPvt - ev) >>> 0) < ((reqProdPvt - old) >>> 0)) {
              Atomics.store(ctl, CTL.EVT_TO_BACK, 1);
              Atomics.notify(ctl, CTL.EVT_TO_BACK, 1);
              notifications++;
            }
          }
        }
        if (reqProdPvt !== pushed) {
          // The window is full with fewer than B unpublished: publish them, or both ends wait.
          const old = pushed;
          Atomics.store(hdr, MR_REQ_PROD, reqProdPvt | 0);
          pushed = reqProdPvt;
          const ev = Atomics.load(hdr, MR_REQ_EVENT) >>> 0;
          if (((reqProdPvt - ev) >>> 0) < ((reqProdPvt - old) >>> 0)) {
            Atomics.store(ctl, CTL.EVT_TO_BACK, 1);
            Atomics.notify(ctl, CTL.EVT_TO_BACK, 1);
            notifications++;
          }
        }
      }

      // Consume every response published.
      // xen_rmb: rsp_prod is read before the response slots (SeqCst load).
      const rp = Atomics.load(hdr, MR_RSP_PROD) >>> 0;
      let waited = false;
      if (rp !== rspCons) {
        if (((rp - rspCons) >>> 0) > ((reqProdPvt - rspCons) >>> 0)) {
          throw new Error(`minimal ring: impossible rsp_prod ${rp} (rsp_cons ${rspCons}, req_prod ${reqProdPvt})`);
        }
        const measuring = win.measuring;
        while (rspCons !== rp) {
          const slot = rspCons & mask;
          rsp.set(rspSlots[slot]);
          const id = rspDv.getUint32(RSP_ID, true);
          if (id !== rspCons || rspDv.getUint32(RSP_ID + 4, true) !== 0) {
            throw new Error(`minimal ring: response id ${id} where ${rspCons} was due`);
          }
          if ((id & sampleMask) === 0 && measuring && nSamples < samples.length) {
            samples[nSamples++] = (performance.now() - sentAt[slot]) * 1e6;
          }
          rspCons = (rspCons + 1) >>> 0;
          completed++;
        }
      } else if (mode === 'poll') {
        const end = idle !== IDLE_NO ? win.hardEnd : win.phaseEnd();
        let spins = 0;
        while ((Atomics.load(hdr, MR_RSP_PROD) >>> 0) === rspCons) {
          if ((++spins & POLL_CHECK_MASK) === 0 && performance.now() >= end) break;
        }
        waited = true;
      } else {
        if (mode === 'adaptive' && tokens.spinWhileEqual(hdr, MR_RSP_PROD, rspCons | 0, DEFAULT_SPIN_ITERATIONS)) continue;
        // Final check: arm rsp_event, then re-read rsp_prod before sleeping.
        Atomics.store(hdr, MR_RSP_EVENT, (rspCons + 1) | 0);
        // xen_mb: the back end must see rsp_event before we re-read rsp_prod.
        if ((Atomics.load(hdr, MR_RSP_PROD) >>> 0) === rspCons) {
          if (Atomics.wait(ctl, CTL.EVT_TO_FRONT, 0, WAIT_SLICE_MS) === 'ok') wakeups++;
          Atomics.store(ctl, CTL.EVT_TO_FRONT, 0);
        }
        waited = true;
      }

      if (waited || (++iter & 15) === 0) {
        const now = performance.now();
        if (now > win.hardEnd) throw new Error(`minimal ring: front past its deadline (rsp_cons ${rspCons}, req_prod ${reqProdPvt})`);
        if (idle === IDLE_DRAINING) {
          if (rspCons === reqProdPvt) {
            // Every response is in: from here on the pair only waits.
            idle = IDLE_MEASURING;
            i0t = now; i0cpu = cpuUs(); i0wake = wakeups + Atomics.load(ctl, CTL.BACK_WAKE);
          }
          continue;
        }
        if (idle === IDLE_MEASURING) {
          if (now >= i0t + (a.idleMs ?? 0)) {
            result = { idleMs: now - i0t, cpuUs: cpuUs() - i0cpu, wakeups: wakeups + Atomics.load(ctl, CTL.BACK_WAKE) - i0wake };
            break;
          }
          continue;
        }
        const t = win.tick(now);
        if (t === 1) {
          if (a.idleMs !== undefined) {
            idle = IDLE_DRAINING; // idle probe: stop producing after the warm-up traffic
            continue;
          }
          m0t = now; m0ops = completed; m0cpu = cpuUs();
          m0notify = notifications + Atomics.load(ctl, CTL.BACK_NOTIFY);
          m0wake = wakeups + Atomics.load(ctl, CTL.BACK_WAKE);
        } else if (t === 2) {
          result = {
            ops: completed - m0ops,
            elapsedNs: (now - m0t) * 1e6,
            rttNs: takeSamples(samples, nSamples),
            notifications: notifications + Atomics.load(ctl, CTL.BACK_NOTIFY) - m0notify,
            wakeups: wakeups + Atomics.load(ctl, CTL.BACK_WAKE) - m0wake,
            cpuUs: cpuUs() - m0cpu,
          };
          break;
        }
      }
    }
  } finally {
    Atomics.store(ctl, CTL.PHASE, PHASE_STOP);
    Atomics.store(ctl, CTL.EVT_TO_BACK, 1);
    Atomics.notify(ctl, CTL.EVT_TO_BACK, 1);
    if (mode === 'poll') tokens.release();
  }
  if (result === null) throw new Error('minimal ring: front ended without a result');
  return result;
}

/**
 * The backend: consumes requests (copy out, read id), writes responses into the
 * same slots, publishes every `batch` (and whatever is left when no request is
 * visible), until the front end sets the stop flag.
 */
function runBack(a: MinimalRingRun): { requests: number } {
  const { size, mask, hdr, dv, ctl, slots } = setup(a);
  const tokens = new SpinTokens(a.spinTokens);
  const B = a.batch, mode = a.waitMode;
  const req = new Uint8Array(REQ_BYTES);
  const reqDv = new DataView(req.buffer);
  const hardEnd = performance.now() + a.timeoutMs - 500;
  if (mode === 'poll') acquireSpinToken(tokens, performance.now() + 1000, 'minimal-ring back');
  let reqCons = 0, rspProdPvt = 0, pushed = 0, requests = 0;
  Atomics.store(ctl, CTL.READY, 1);
  try {
    for (;;) {
      // xen_rmb: req_prod is read before the request slots.
      const rp = Atomics.load(hdr, MR_REQ_PROD) >>> 0;
      if (rp !== reqCons) {
        if (((rp - rspProdPvt) >>> 0) > size) throw new Error(`minimal ring: impossible req_prod ${rp} (rsp_prod_pvt ${rspProdPvt})`);
        while (reqCons !== rp) {
          req.set(slots[reqCons & mask]); // copy the request out once; read only the copy
          const op = reqDv.getUint8(REQ_OPERATION);
          const idLo = reqDv.getUint32(REQ_ID, true);
          const idHi = reqDv.getUint32(REQ_ID + 4, true);
          reqCons = (reqCons + 1) >>> 0;
          const off = MR_RING_OFFSET + (rspProdPvt & mask) * MR_ENTRY;
          dv.setUint32(off + RSP_ID, idLo, true);
          dv.setUint32(off + RSP_ID + 4, idHi, true);
          dv.setUint8(off + RSP_OPERATION, op);
          dv.setUint8(off + RSP_PAD_A, 0);
          dv.setInt16(off + RSP_STATUS, 0, true);
          dv.setUint32(off + RSP_PAD_B, 0, true);
          rspProdPvt = (rspProdPvt + 1) >>> 0;
          requests++;
          if (((rspProdPvt - pushed) >>> 0) >= B || reqCons === rp) {
            // xen_wmb: the response slots are visible before rsp_prod moves.
            const old = pushed;
            Atomics.store(hdr, MR_RSP_PROD, rspProdPvt | 0);
            pushed = rspProdPvt;
            // xen_mb: rsp_prod is published before we read rsp_event.
            const ev = Atomics.load(hdr, MR_RSP_EVENT) >>> 0;
            if (((rspProdPvt - ev) >>> 0) < ((rspProdPvt - old) >>> 0)) {
              Atomics.store(ctl, CTL.EVT_TO_FRONT, 1);
              Atomics.notify(ctl, CTL.EVT_TO_FRONT, 1);
              Atomics.add(ctl, CTL.BACK_NOTIFY, 1);
            }
          }
        }
        continue;
      }
      if (Atomics.load(ctl, CTL.PHASE) === PHASE_STOP) break;
      if (mode === 'poll') {
        let spins = 0;
        while ((Atomics.load(hdr, MR_REQ_PROD) >>> 0) === reqCons) {
          if ((++spins & POLL_CHECK_MASK) === 0) {
            if (Atomics.load(ctl, CTL.PHASE) === PHASE_STOP) break;
            if (performance.now() > hardEnd) throw new Error('minimal ring: back past its deadline');
          }
        }
        continue;
      }
      if (mode === 'adaptive' && tokens.spinWhileEqual(hdr, MR_REQ_PROD, reqCons | 0, DEFAULT_SPIN_ITERATIONS)) continue;
      Atomics.store(hdr, MR_REQ_EVENT, (reqCons + 1) | 0);
      // xen_mb: the front end must see req_event before we re-read req_prod.
      if ((Atomics.load(hdr, MR_REQ_PROD) >>> 0) === reqCons && Atomics.load(ctl, CTL.PHASE) !== PHASE_STOP) {
        if (Atomics.wait(ctl, CTL.EVT_TO_BACK, 0, WAIT_SLICE_MS) === 'ok') Atomics.add(ctl, CTL.BACK_WAKE, 1);
        Atomics.store(ctl, CTL.EVT_TO_BACK, 0);
      }
      if (performance.now() > hardEnd) throw new Error('minimal ring: back past its deadline');
    }
  } finally {
    if (mode === 'poll') tokens.release();
  }
  return { requests };
}

/** Worker entry: serves `front` and `back` runs. */
export function start(workerData: { spinTokens: SharedArrayBuffer }): void {
  serve({
    front: (r: WorkerRequest) => runFront({ ...(r.args as MinimalRingArgs), spinTokens: workerData.spinTokens }),
    back: (r: WorkerRequest) => runBack({ ...(r.args as MinimalRingArgs), spinTokens: workerData.spinTokens }),
  });
}
