/**
 * Wiring of XenStore connections onto event channels: the guest end of a domU's
 * XenStore ring, and xenstored's end of it in dom0. The ring transports themselves
 * (xenstore/client.ts) know nothing of event channels; this module binds them.
 *
 * @see docs/misc/xenstore-ring.txt
 */
import type { EvtchnPort } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import { XenbusClient, ringTransport, ringServer, connectLocal, type XenbusClientOptions, type XenstoreRingServer } from './client.ts';
import type { Xenstored } from './xenstored.ts';

export { connectLocal };

/**
 * Connects a domU's XenBus client over its XenStore ring page: requests are
 * written into the `req` byte ring and the port is notified after every index
 * update; the port's handler pumps replies and watch events out of `rsp`.
 * @param page the 4096-byte XenStore ring page from start info
 * @param port the domU's XenStore port (bound by xenstored in dom0)
 */
export function connectGuestToRing(evtchn: EventChannels, page: Uint8Array, port: EvtchnPort, opts?: XenbusClientOptions): XenbusClient {
  const t = ringTransport(page, () => evtchn.notify(port));
  const client = new XenbusClient(t, opts);
  evtchn.on(port, () => t.pump());
  t.pump();
  return client;
}

/**
 * xenstored's end of a domU's XenStore ring (in dom0): binds the domU's unbound
 * XenStore port, connects the domain to xenstored and pumps requests on each event.
 * @returns the server and dom0's local port (to close on release).
 */
export function serveGuestRing(
  evtchn: EventChannels, xenstored: Xenstored, domid: number, page: Uint8Array, remotePort: number,
): { server: XenstoreRingServer; port: EvtchnPort } {
  const port = evtchn.bindInterdomain(domid, remotePort);
  const conn = xenstored.connect(domid);
  const server = ringServer(page, conn, () => evtchn.notify(port));
  evtchn.on(port, () => server.pump());
  server.pump();
  return { server, port };
}
