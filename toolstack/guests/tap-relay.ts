/**
 * An example guest that joins a host TAP device to the bridge: it relays Ethernet
 * frames between a UDP socket on 127.0.0.1 (one frame per datagram, as `socat
 * TUN,tun-type=tap,iff-no-pi UDP-DATAGRAM:127.0.0.1:PORT` carries them) and its vif
 * `eth0`. So the kernel's network stack behind the TAP talks through pvio's rings:
 * TAP → socat → this guest → netfront → netback → bridge → ...
 *
 * Arguments {@link TapRelayArgs}. It runs until its `stop` operation is called
 * (`GuestHandle.call('stop')`) and returns its counters ({@link TapRelayCounters}).
 */
import { createSocket } from 'node:dgram';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Netfront } from '../../netfront/xenbus.ts';
import { serveCalls } from '../guest-calls.ts';

/** Where the relay listens and where it sends (both UDP on 127.0.0.1). */
export interface TapRelayArgs {
  /** The port this guest binds: socat sends the TAP's frames here. */
  readonly listenPort: number;
  /** socat's own port: frames from the vif go there. */
  readonly peerPort: number;
}

/** Frames and bytes each way, and frames the vif refused (too large, broken). */
export interface TapRelayCounters {
  fromTap: number;
  fromTapBytes: number;
  toTap: number;
  toTapBytes: number;
  refused: number;
}

export default async function main(k: Kernel): Promise<TapRelayCounters> {
  const a = k.args as TapRelayArgs;
  const nic = k.devices.get('eth0') as Netfront | undefined;
  if (!nic) throw new Error('no eth0: give the guest a vif');
  const c: TapRelayCounters = { fromTap: 0, fromTapBytes: 0, toTap: 0, toTapBytes: 0, refused: 0 };
  const sock = createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(a.listenPort, '127.0.0.1', () => resolve());
  });
  // Frames go to the vif in the order they came (a send may wait for ring space).
  let chain: Promise<void> = Promise.resolve();
  sock.on('message', (m) => {
    const frame = new Uint8Array(m.buffer, m.byteOffset, m.length);
    chain = chain.then(() => nic.send(frame)).then(() => {
      c.fromTap++;
      c.fromTapBytes += frame.length;
    }, () => void c.refused++);
  });
  let stopped = false;
  serveCalls(k.control!, {
    stop: () => {
      stopped = true;
      return true;
    },
    counters: () => ({ ...c }),
  });
  while (!stopped) {
    const f = await nic.receive(100);
    if (!f) continue;
    sock.send(f, a.peerPort, '127.0.0.1');
    c.toTap++;
    c.toTapBytes += f.length;
  }
  await chain;
  sock.close();
  return c;
}
