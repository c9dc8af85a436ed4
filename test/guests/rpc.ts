/**
 * A test guest that serves operations on its toolstack control port, so a test can
 * drive grants, event channels, XenStore and disks across real worker domains
 * (`GuestHandle.call(op, args)`). Its main resolves on `exit` and rejects on `crash`.
 * Everything it does goes through the kernel's public interfaces; `garbage` plays a
 * hostile peer by writing into the pair page it shares with another domain.
 */
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { GuestPage } from '../../hypervisor/guest-memory.ts';
import type { EvtchnPort, GrantHandle, GrantRef } from '../../hypervisor/abi.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';
import type { Netfront } from '../../netfront/xenbus.ts';
import type { CopyRequest } from '../../grant-table/gnttab.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

type Args = Record<string, unknown> & { [k: string]: any };

export default function main(k: Kernel): Promise<unknown> {
  const pages = new Map<number, GuestPage>();
  const mapped = new Map<number, Uint8Array>();
  const counts = new Map<number, number>();
  const loops = new Map<string, { completed: number; errors: number; lastError: string; stop: boolean }>();
  const ctl = k.control!;
  let finish!: (v: unknown) => void;
  let fail!: (e: Error) => void;
  const done = new Promise<unknown>((res, rej) => {
    finish = res;
    fail = rej;
  });
  const count = (port: EvtchnPort) => () => counts.set(port, (counts.get(port) ?? 0) + 1);
  const until = async (cond: () => boolean, ms: number, what: string) => {
    const deadline = performance.now() + ms;
    while (!cond()) {
      if (performance.now() > deadline) throw new Error(`timeout waiting for ${what}`);
      await new Promise((r) => setImmediate(r));
    }
  };
  const nic = (name: string) => {
    const n = k.devices.get(name) as Netfront | undefined;
    if (!n) throw new Error(`no nic ${name}`);
    return n;
  };
  const disk = (name: string) => {
    const d = k.devices.get(name) as Blkfront | undefined;
    if (!d) throw new Error(`no disk ${name}`);
    return d;
  };

  const deviceEvents: Array<{ name: string; change: string }> = [];
  k.onDevice((e) => deviceEvents.push({ name: e.name, change: e.change }));
  const ops: Record<string, (a: Args) => unknown> = {
    info: () => ({ domid: k.domid, name: k.name, devices: [...k.devices.keys()] }),
    allocPages: (a) => k.memory.allocPages(a.n).map((p) => (pages.set(p.mfn, p), p.mfn)),
    fill: (a) => void pages.get(a.mfn)!.bytes.set(new TextEncoder().encode(a.text), a.offset ?? 0),
    readPage: (a) => new TextDecoder().decode(pages.get(a.mfn)!.bytes.subarray(a.offset ?? 0, (a.offset ?? 0) + a.len)),
    grant: (a) => k.gnttab.grantAccess(a.domid, a.mfn, a.readonly),
    endAccess: (a) => k.gnttab.endAccess(a.ref as GrantRef),
    grantFlags: (a) => k.gnttab.flags(a.ref as GrantRef),
    map: (a) => k.gnttab.map(a.reqs).map((r) => {
      if (r.page) mapped.set(r.handle, r.page);
      return { status: r.status, handle: r.handle, mfn: r.mfn };
    }),
    readMapped: (a) => new TextDecoder().decode(mapped.get(a.handle)!.subarray(0, a.len)),
    writeMapped: (a) => void mapped.get(a.handle)!.set(new TextEncoder().encode(a.text)),
    unmap: (a) => {
      for (const h of a.handles) mapped.delete(h);
      return k.gnttab.unmap(a.handles as GrantHandle[]);
    },
    copy: (a) => k.gnttab.copy(a.reqs as CopyRequest[]),
    allocUnbound: (a) => {
      const p = k.evtchn.allocUnbound(a.remote);
      k.evtchn.on(p, count(p));
      return p;
    },
    bind: (a) => {
      const p = k.evtchn.bindInterdomain(a.remote, a.port);
      k.evtchn.on(p, count(p));
      return p;
    },
    echo: (a) => {
      const p = a.port as EvtchnPort;
      k.evtchn.on(p, () => {
        count(p)();
        k.evtchn.notify(p);
      });
    },
    evtCount: (a) => counts.get(a.port) ?? 0,
    notify: (a) => {
      for (let i = 0; i < (a.n ?? 1); i++) k.evtchn.notify(a.port);
    },
    pingpong: async (a) => {
      const p = a.port as EvtchnPort;
      const t0 = performance.now();
      for (let r = 0; r < a.rounds; r++) {
        const before = counts.get(p) ?? 0;
        k.evtchn.notify(p);
        await until(() => (counts.get(p) ?? 0) > before, 5000, `echo ${r}`);
      }
      return { rounds: a.rounds, usPerRound: ((performance.now() - t0) * 1000) / a.rounds };
    },
    garbage: (a) => {
      // A hostile peer: set every bit of the pair page and hammer the wake word.
      const page = k.evtchn.sendPageOf(a.port)!;
      for (let i = 0; i < page.length; i++) Atomics.store(page, i, -1);
      const w = k.evtchn.remoteWakeOf(a.port)!;
      for (let i = 0; i < 100; i++) {
        Atomics.store(w, 0, (Math.random() * 2 ** 31) | 0);
        Atomics.notify(w, 0);
      }
    },
    closePort: (a) => k.evtchn.close(a.port),
    bindVcpu: (a) => k.evtchn.bindVcpu(a.port, a.vcpu),
    /** Runs op `a.op` on vCPU `a.vcpu` (served by {@link secondary}). */
    onVcpu: (a) => k.callVcpu(a.vcpu, a.op, a.args ?? {}),
    mask: (a) => k.evtchn.mask(a.port),
    unmask: (a) => k.evtchn.unmask(a.port),
    allocExtent: (a) => {
      const e = k.memory.allocExtent(a.order);
      new TextEncoder().encodeInto(a.text ?? '', e.bytes.subarray((a.page ?? 0) * 4096));
      return e.mfn;
    },
    mapRing: (a) => {
      try {
        const r = k.gnttab.mapRing(a.domid, a.refs);
        const text = new TextDecoder().decode(r.bytes.subarray(a.readPage * 4096, a.readPage * 4096 + a.len));
        k.gnttab.unmap(r.handles);
        return { ok: true, length: r.bytes.length, text };
      } catch (e) {
        return { ok: false, error: (e as Error).message, status: (e as { status?: number }).status };
      }
    },
    allocTooMuch: (a) => {
      try {
        k.memory.allocPages(a.n);
        return 'allocated';
      } catch (e) {
        return (e as { code?: string }).code;
      }
    },
    closeDisk: async (a) => {
      await disk(a.name).close();
      return { ...k.gnttab.counters };
    },
    forceWrite: async (a) => {
      // A frontend that ignores the backend's VDISK_READONLY: it sends the WRITE anyway.
      const d = disk(a.name) as unknown as { io: { info: { readOnly: boolean } } };
      d.io.info.readOnly = false;
      try {
        await disk(a.name).write(0, new Uint8Array(4096));
        return 'no error';
      } catch (e) {
        return (e as Error).message;
      }
    },
    status: (a) => k.evtchn.status(a.port),
    counters: () => ({ evtchn: { ...k.evtchn.counters }, gnttab: { ...k.gnttab.counters } }),
    xsRead: async (a) => {
      try {
        return { value: await k.xenbus.read(a.path) };
      } catch (e) {
        return { errno: (e as { errno?: string }).errno ?? String(e) };
      }
    },
    xsWrite: async (a) => {
      try {
        await k.xenbus.write(a.path, a.value);
        return { ok: true };
      } catch (e) {
        return { errno: (e as { errno?: string }).errno ?? String(e) };
      }
    },
    diskInfo: (a) => {
      const d = disk(a.name);
      return {
        sectors: d.sectors, sectorSize: d.sectorSize, readOnly: d.readOnly, backendStateAtInitialised: d.backendStateAtInitialised,
        counters: { ...d.counters }, features: { ...d.features }, queues: d.queueCounters(),
      };
    },
    // Runs `ops` concurrently; each answers { sha } (read: of the bytes read; write:
    // of the bytes written, `byte`-filled) or { error, status }.
    diskIo: async (a) => {
      const d = disk(a.name);
      return Promise.all((a.ops as Array<{ op: string; sector: number; count: number; byte?: number }>).map(async (o) => {
        try {
          let bytes: Uint8Array = new Uint8Array(0);
          switch (o.op) {
            case 'read': bytes = await d.read(o.sector, o.count); break;
            case 'write': bytes = new Uint8Array(o.count * 512).fill(o.byte ?? 0); await d.write(o.sector, bytes); break;
            case 'flush': await d.flush(); break;
            case 'barrier': await d.barrier(); break;
            case 'discard': await d.discard(o.sector, o.count); break;
            default: throw new Error(`unknown op ${o.op}`);
          }
          return { sha: createHash('sha256').update(bytes).digest('hex') };
        } catch (e) {
          return { error: (e as Error).message, status: (e as { status?: number }).status };
        }
      }));
    },
    readDisk: async (a) => {
      const d = disk(a.name);
      return createHash('sha256').update(await d.read(a.sector ?? 0, a.count ?? d.sectors)).digest('hex');
    },
    writeDisk: async (a) => {
      const d = disk(a.name);
      const data = new Uint8Array(a.count * 512).fill(a.byte);
      await d.write(a.sector, data);
      await d.flush();
      return createHash('sha256').update(data).digest('hex');
    },
    writeExpectError: async (a) => {
      try {
        await disk(a.name).write(0, new Uint8Array(512));
        return 'no error';
      } catch (e) {
        return (e as Error).message;
      }
    },
    readForever: (a) => {
      const d = disk(a.name);
      const loop = async () => {
        for (;;) await Promise.all(Array.from({ length: 8 }, (_, i) => d.read((i * 88) % Math.max(1, d.sectors - 88), Math.min(88, d.sectors))));
      };
      void loop().catch(() => undefined);
      return d.inFlight;
    },
    // Reads 4 KiB at a time, `parallel` readers in a loop, counting completions, so a
    // test can watch this disk keep serving while another guest misbehaves.
    readLoop: (a) => {
      const d = disk(a.name);
      const c = { completed: 0, errors: 0, lastError: '', stop: false };
      loops.set(a.name, c);
      const span = Math.max(1, d.sectors - 8);
      const reader = async (r: number) => {
        for (let i = r; !c.stop; i += 7) {
          try {
            await d.read((i * 8) % span, 8);
            c.completed++;
          } catch (e) {
            c.errors++;
            c.lastError = (e as Error).message;
            await new Promise((res) => setTimeout(res, 10));
          }
        }
      };
      for (let r = 0; r < (a.parallel ?? 4); r++) void reader(r);
      return true;
    },
    readLoopCount: (a) => {
      const c = loops.get(a.name);
      return c ? { completed: c.completed, errors: c.errors, lastError: c.lastError } : null;
    },
    readLoopStop: (a) => {
      const c = loops.get(a.name);
      if (c) c.stop = true;
      return c?.completed ?? 0;
    },
    inFlight: (a) => disk(a.name).inFlight,
    nicInfo: (a) => {
      const n = nic(a.name);
      return { name: n.name, mac: n.mac, mtu: n.mtu, features: n.features, counters: n.counters, broken: n.isBroken, gnttab: { ...k.gnttab.counters } };
    },
    /** Sends each frame of `frames` (byte arrays) in order; `csumBlank` marks them partial. */
    nicSend: async (a) => {
      const n = nic(a.name);
      for (const f of a.frames as number[][]) await n.send(Uint8Array.from(f), { csumBlank: a.csumBlank ?? false });
      return (a.frames as unknown[]).length;
    },
    /** Up to `max` received frames (byte arrays), waiting up to `timeoutMs` for the first and `idleMs` for each next. */
    nicReceive: async (a) => {
      const n = nic(a.name);
      const out: number[][] = [];
      let f = await n.receive(a.timeoutMs ?? 2000);
      while (f) {
        out.push([...f]);
        if (out.length >= (a.max ?? 1_000_000)) break;
        f = await n.receive(a.idleMs ?? 50);
      }
      return out;
    },
    /** Sends each frame with `trySend` (never waiting), `await send` only when the ring is full; returns how many trySend took. */
    nicTrySend: async (a) => {
      const n = nic(a.name);
      let took = 0;
      for (const f of a.frames as number[][]) {
        const b = Uint8Array.from(f);
        if (n.trySend(b)) took++;
        else await n.send(b);
      }
      return took;
    },
    /** Up to `max` frames through `receiveBatch(.., { borrow: true })`: each lent frame is copied out before the next batch. */
    nicReceiveBorrowed: async (a) => {
      const n = nic(a.name);
      const out: number[][] = [];
      let batches = 0;
      while (out.length < (a.max ?? 1_000_000)) {
        const batch = await n.receiveBatch(a.max - out.length, out.length === 0 ? a.timeoutMs ?? 2000 : a.idleMs ?? 100, { borrow: true });
        if (batch.length === 0) break;
        batches++;
        for (const f of batch) out.push([...f]);
      }
      n.releaseLent();
      return { frames: out, batches };
    },
    /** The names in k.devices. */
    devices: () => [...k.devices.keys()].sort(),
    /** Waits (up to `timeoutMs`) until device `name` is (`present`) or is not in k.devices; the device events seen so far. */
    waitDevice: async (a) => {
      const deadline = Date.now() + (a.timeoutMs ?? 10_000);
      while (k.devices.has(a.name) !== (a.present ?? true)) {
        if (Date.now() > deadline) throw new Error(`device ${a.name} did not ${a.present === false ? 'leave' : 'come'}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      return deviceEvents.map((e) => `${e.change} ${e.name}`);
    },
    exit: (a) => finish(a.value ?? null),
    crash: (a) => void setImmediate(() => fail(new Error(a.message ?? 'guest crashed on purpose'))),
  };

  serveCalls(ctl, ops);
  return done;
}

/**
 * vCPUs 1..n of the test guest: count the events of ports handed to them, send,
 * and report their own event-channel counters (each vCPU is its own heap).
 */
export function secondary(k: Kernel): void {
  const counts = new Map<number, number>();
  k.serveVcpuCalls({
    listen: (a: Args) => k.evtchn.on(a.port, (p) => void counts.set(p, (counts.get(p) ?? 0) + 1)),
    evtCount: (a: Args) => counts.get(a.port) ?? 0,
    notify: (a: Args) => k.evtchn.notify(a.port),
    vcpuOf: (a: Args) => k.evtchn.vcpuOf(a.port),
  });
}
