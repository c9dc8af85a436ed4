// Real kernel network stacks over the PV rings. socat creates a TAP device (one frame
// per UDP datagram on 127.0.0.1) and the test moves it into a network namespace of
// its own; a relay guest (toolstack/guests/tap-relay.ts) joins that UDP socket to its
// vif on the bridge.
// (a) The kernel in a namespace pings an example guest (toolstack/guests/net-peer.ts),
//     which answers ARP and ICMP through netfront/netback/bridge.
// (b) Two namespaces behind two TAPs and two relays: a 1 MB TCP stream sent with nc
//     travels TAP → relay A → netfront → netback → bridge → netback → netfront →
//     relay B → TAP and arrives byte for byte; each relay's vif carried over 1 MB.
// Needs root, /dev/net/tun and network namespaces (as CI runs); elsewhere the tests
// are skipped and say why. Missing tools fail, naming the setup command.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { existsSync } from 'node:fs';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import type { TapRelayArgs, TapRelayCounters } from '../toolstack/guests/tap-relay.ts';
import { eventually } from './helpers.ts';

const RELAY = new URL('../toolstack/guests/tap-relay.ts', import.meta.url).pathname;
const PEER = new URL('../toolstack/guests/net-peer.ts', import.meta.url).pathname;
const SETUP = 'bash scripts/setup-debian.sh socat iproute2 iputils-ping netcat-openbsd';
const tag = `pv${process.pid % 100000}`;

/** Why the TAP tests cannot run here, or null. */
function whyNot(): string | null {
  if (process.getuid?.() !== 0) return 'not root: creating TAP devices and network namespaces needs root (CI runs as root)';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  const ns = `${tag}-probe`;
  const r = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8' });
  if (r.error) return `ip (iproute2) is missing: run \`${SETUP}\``;
  if (r.status !== 0) return `network namespaces are not allowed here (ip netns add: ${r.stderr.trim()})`;
  spawnSync('ip', ['netns', 'del', ns]);
  return null;
}
const why = whyNot();
if (why) console.warn(`net-tap tests skipped: ${why}`);

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') throw new Error(`${cmd} is not installed: run \`${SETUP}\``);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

/** A free UDP port on 127.0.0.1 (bound and released). */
async function freePort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((res) => s.bind(0, '127.0.0.1', () => res()));
  const p = s.address().port;
  s.close();
  return p;
}

const procs: ChildProcess[] = [];
const namespaces: string[] = [];

/**
 * socat's TAP `dev` in a new namespace `ns` with `addr`/24, relaying to `guestPort`
 * from `socatPort`. socat only creates the device (no `iff-up`: its ioctl would race
 * the move to the namespace); the test brings it up there.
 */
async function tapInNamespace(dev: string, ns: string, addr: string, guestPort: number, socatPort: number): Promise<void> {
  const p = spawn('socat', ['-d', `TUN,tun-type=tap,tun-name=${dev},iff-no-pi`, `UDP-DATAGRAM:127.0.0.1:${guestPort},bind=127.0.0.1:${socatPort}`],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(p);
  const spawnError = new Promise<never>((_, rej) => p.once('error', (e: NodeJS.ErrnoException) =>
    rej(e.code === 'ENOENT' ? new Error(`socat is not installed: run \`${SETUP}\``) : e)));
  await Promise.race([spawnError, eventually(() => spawnSync('ip', ['link', 'show', dev]).status === 0, 5000, `socat's TAP ${dev}`)]);
  run('ip', ['netns', 'add', ns]);
  namespaces.push(ns);
  run('ip', ['link', 'set', dev, 'netns', ns]);
  run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev]);
  run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
  run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
}

/** A relay guest listening on a fresh port; @returns it and the port socat must bind. */
async function relay(m: Machine, name: string): Promise<{ g: GuestHandle; args: TapRelayArgs }> {
  const args: TapRelayArgs = { listenPort: await freePort(), peerPort: await freePort() };
  const g = await m.createGuest({ name, memoryMiB: 32, vcpus: 1, kernel: RELAY, args, vifs: [{}] });
  await g.call('counters', {}); // its socket is bound and its vif connected
  return { g, args };
}

describe.skipIf(why !== null)('the kernel talks through the PV rings (TAP + network namespaces)', () => {
  let m: Machine;
  beforeAll(async () => {
    m = await Machine.boot();
  });
  afterAll(async () => {
    for (const p of procs) p.kill('SIGTERM');
    for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns]);
    await m?.shutdown();
  });

  it('(a) a namespace pings a guest through TAP → relay → netfront → netback → bridge', async () => {
    const peer = await m.createGuest({ name: 'tap-peer', memoryMiB: 32, vcpus: 1, kernel: PEER, args: { ip: '10.9.0.2', runMs: 60_000 }, vifs: [{}] });
    const { g, args } = await relay(m, 'tap-relay0');
    await tapInNamespace(`${tag}t0`, `${tag}-a`, '10.9.0.1', args.listenPort, args.peerPort);
    const out = run('ip', ['netns', 'exec', `${tag}-a`, 'ping', '-c', '3', '-W', '2', '-i', '0.2', '10.9.0.2']);
    expect(out).toMatch(/3 packets transmitted, 3 received/);
    const c = (await g.call('counters', {})) as TapRelayCounters;
    expect(c.fromTap).toBeGreaterThanOrEqual(4); // ARP request + 3 echo requests (at least)
    expect(c.toTap).toBeGreaterThanOrEqual(4);
    await g.call('stop', {});
    await m.destroy(peer.domid);
  });

  it('(b) a 1 MB TCP stream between two namespaces crosses two relays and the bridge byte for byte', async () => {
    const A = await relay(m, 'tap-relayA');
    const B = await relay(m, 'tap-relayB');
    await tapInNamespace(`${tag}tA`, `${tag}-A`, '10.9.1.1', A.args.listenPort, A.args.peerPort);
    await tapInNamespace(`${tag}tB`, `${tag}-B`, '10.9.1.2', B.args.listenPort, B.args.peerPort);
    const data = randomBytes(1 << 20);
    const got: Buffer[] = [];
    const rx = spawn('ip', ['netns', 'exec', `${tag}-B`, 'nc', '-l', '-w', '30', '10.9.1.2', '5001'], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(rx);
    rx.stdout!.on('data', (d: Buffer) => got.push(d));
    // 'close': the process has exited and its stdout is drained.
    const rxDone = new Promise<number | null>((res) => rx.once('close', (code) => res(code)));
    // The listener must be up before the sender connects.
    await eventually(() => /:5001\b/.test(spawnSync('ip', ['netns', 'exec', `${tag}-B`, 'ss', '-ltn'], { encoding: 'utf8' }).stdout ?? ''), 5000, 'nc listening');
    // Asynchronous: this thread must keep draining the receiver's stdout meanwhile.
    const tx = spawn('ip', ['netns', 'exec', `${tag}-A`, 'nc', '-N', '-w', '30', '10.9.1.2', '5001'], { stdio: ['pipe', 'ignore', 'pipe'] });
    procs.push(tx);
    const txDone = new Promise<number | null>((res) => tx.once('close', (code) => res(code)));
    tx.stdin!.end(data);
    const deadline = (ms: number) => new Promise<'timeout'>((res) => setTimeout(() => res('timeout'), ms));
    expect(await Promise.race([txDone, deadline(45_000)])).toBe(0);
    expect(await Promise.race([rxDone, deadline(15_000)])).toBe(0);
    const recv = Buffer.concat(got);
    expect(recv.length).toBe(data.length);
    expect(createHash('sha256').update(recv).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    const s = (await m.dom0Stats()) as { vifs: Record<string, { txBytes: number; rxBytes: number }> };
    const va = s.vifs[`tap-relayA/vif${A.g.domid}.0`];
    const vb = s.vifs[`tap-relayB/vif${B.g.domid}.0`];
    expect(va.txBytes).toBeGreaterThan(1 << 20); // guest A → bridge: the stream with its headers
    expect(vb.rxBytes).toBeGreaterThan(1 << 20); // bridge → guest B
    await A.g.call('stop', {});
    await B.g.call('stop', {});
  }, 90_000);
});
