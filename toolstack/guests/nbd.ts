/**
 * The NBD guest of `pvio up --disk FILE --nbd PORT`: it serves its disk `xvda` over
 * the NBD protocol (toolstack/nbd/server.ts), so that every byte a tool reads or
 * writes goes tool → this guest → blkfront → ring → blkback → storage.
 *
 * It prints one console line once it listens, e.g.
 * `nbd: serving xvda (N bytes, writable, flush, trim) on 127.0.0.1:PORT` (or
 * `on unix:PATH`; `flush` and `trim` when the backend offers them), and
 * serves until the toolstack calls its `stop` operation on the control port (or the
 * domain is destroyed). On `stop` it ends every NBD connection after the requests in
 * flight are answered, flushes xvda, prints what it served and returns, so the
 * domain closes its disk and powers off.
 *
 * Arguments (from the toolstack): {@link NbdGuestArgs}.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';
import { blkfrontNbdDevice } from '../nbd/blkfront-device.ts';
import { NbdServer, type NbdListen, type NbdServerCounters } from '../nbd/server.ts';

/** The NBD guest's arguments: where to listen (TCP port 0 picks a free port). */
export interface NbdGuestArgs {
  readonly listen: NbdListen;
}

/** The NBD guest's main. @returns the server's counters. @throws when xvda is missing or listening fails. */
export default async function main(k: Kernel): Promise<NbdServerCounters> {
  const { listen } = k.args as NbdGuestArgs;
  const disk = k.devices.get('xvda') as Blkfront | undefined;
  if (!disk) throw new Error('nbd: no xvda to serve');
  // A stop may come before the server listens: the control port queues it until this listener is attached.
  const stopped = new Promise<number>((resolve) => {
    k.control?.on('message', (m: { type?: string; id?: number; op?: string }) => {
      if (m?.type === 'call' && m.op === 'stop') resolve(m.id!);
      else if (m?.type === 'call') k.control!.postMessage({ type: 'reply', id: m.id, ok: false, error: `unknown op ${m.op}` });
    });
  });
  const dev = blkfrontNbdDevice(disk);
  const server = new NbdServer(dev, { name: 'xvda', description: `pvio ${k.name} xvda` });
  const where = await server.listen(listen);
  const offers = [dev.readOnly ? 'read-only' : 'writable', ...(dev.readOnly ? [] : [dev.canFlush && 'flush', dev.canDiscard && 'trim'])].filter(Boolean);
  k.console.log(`nbd: serving xvda (${server.exportSize} bytes, ${offers.join(', ')}) on ${where}`);
  const id = await stopped;
  await server.close();
  await disk.flush();
  const c = server.counters;
  k.console.log(`nbd: stopped after ${c.requests} requests on ${c.connections} connections ` +
    `(${c.bytesRead} bytes read, ${c.bytesWritten} bytes written, ${c.errors} errors)`);
  k.control?.postMessage({ type: 'reply', id, ok: true, value: { ...c } });
  return { ...c };
}
