// `pvio up --disk IMG --nbd 0` driven by real NBD tools from Debian (qemu-utils,
// libnbd-bin, fio; installed by scripts/setup-debian.sh through `npm test`): every
// byte goes tool → NBD guest → blkfront → ring → blkback → the image file.
// nbdinfo reads the size and flags, qemu-io write/read patterns verify (aligned and
// not), TRIM and WRITE_ZEROES punch holes in the file, fio random writes verify with crc32c, qemu-img convert writes an image that
// qemu-img compare finds identical and that the image file holds after a clean
// SIGTERM; then a read-only export on a Unix socket, and a port already in use.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES } from '../toolstack/nbd/protocol.ts';
import { NbdClient } from './nbd-client.ts';

const BIN = fileURLToPath(new URL('../toolstack/bin/pvio.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'pvio-nbd-'));
const env = { ...process.env, PVIO_DATA_DIR: join(dir, 'data') };
const SIZE = 8 * 1048576;
const LISTENING = /nbd: serving xvda \((\d+) bytes, ([^)]*)\) on (\S+)/;

/** A running `pvio up`: its output so far, its exit, and the listening line's parts. */
interface Pvio {
  child: ChildProcessWithoutNullStreams;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
  size: number;
  offers: string[];
  where: string;
}

const running: Pvio[] = [];

/** Starts `pvio up --no-progress ARGS` and waits (30 s at most) for the NBD guest's listening line. */
async function startPvio(args: string[]): Promise<Pvio> {
  const child = spawn(process.execPath, [BIN, 'up', '--no-progress', ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  let exited = false;
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => {
    exited = true;
    r(code);
  }));
  const p = { child, out: () => out, err: () => err, exit, size: 0, offers: [] as string[], where: '' };
  running.push(p);
  const deadline = Date.now() + 30_000;
  let m: RegExpMatchArray | null = null;
  while (!(m = out.match(LISTENING)) && !exited && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  if (!m) throw new Error(`pvio did not start the NBD export:\n${out}\n${err}`);
  p.size = Number(m[1]);
  p.offers = m[2]!.split(', ');
  p.where = m[3]!;
  return p;
}

/** Stops a pvio with `signal`; @returns its exit status (fails the test after 30 s). */
async function stopPvio(p: Pvio, signal: NodeJS.Signals): Promise<number | null> {
  p.child.kill(signal);
  const code = await Promise.race([p.exit, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 30_000))]);
  expect(code, `pvio did not exit after ${signal}:\n${p.out()}\n${p.err()}`).not.toBe('hung');
  return code as number | null;
}

/** Runs a tool to completion (60 s at most). */
function tool(cmd: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    throw new Error(`${cmd} is not installed: run bash scripts/setup-debian.sh qemu-utils libnbd-bin fio (npm test does)`);
  }
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** nbdinfo's JSON description of the export at `uri`. */
function nbdinfo(uri: string): Record<string, unknown> {
  const r = tool('nbdinfo', ['--json', uri]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return (JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
}

afterAll(() => {
  for (const p of running) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('pvio up --nbd: real tools through the PV path', () => {
  const img = join(dir, 'disk.img');
  const src = join(dir, 'src.img');
  let pvio: Pvio;
  let uri: string;
  let port: number;

  beforeAll(async () => {
    writeFileSync(img, randomBytes(SIZE));
    // The image that qemu-img convert writes: random data with runs of zeroes (written as WRITE_ZEROES).
    const s = randomBytes(SIZE);
    for (let o = 0; o < SIZE; o += 1048576) s.fill(0, o + 65536, o + 65536 + 300_000);
    writeFileSync(src, s);
    pvio = await startPvio(['--disk', img, '--nbd', '0']);
    uri = `nbd://${pvio.where}`;
    port = Number(pvio.where.split(':')[1]);
  });

  it('prints the listening line with the chosen port, the size and writable', () => {
    expect(pvio.where).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(port).toBeGreaterThan(0);
    expect(pvio.size).toBe(SIZE);
    expect(pvio.offers[0]).toBe('writable');
    expect(pvio.out()).toMatch(/starting guest with xvda=.*disk\.img \(w\)/);
  });

  it('nbdinfo reads the size and flags', () => {
    const e = nbdinfo(uri);
    expect(e['export-size']).toBe(SIZE);
    expect(e).toMatchObject({
      is_read_only: false, can_flush: pvio.offers.includes('flush'), can_fua: pvio.offers.includes('flush'),
      can_trim: pvio.offers.includes('trim'), can_zero: true, can_multi_conn: true,
      block_size_minimum: 512, block_size_preferred: 4096, block_size_maximum: 32 * 1048576,
    });
  });

  it('qemu-io write/read patterns verify, at aligned and unaligned offsets', () => {
    const r = tool('qemu-io', ['-f', 'raw',
      '-c', 'write -P 0xab 0 1M', '-c', 'read -P 0xab 0 1M',
      '-c', 'write -P 0xcd 513 3001', '-c', 'read -P 0xcd 513 3001',
      '-c', 'read -P 0xab 0 513', '-c', 'read -P 0xab 3514 1045062',
      '-c', 'aio_write -P 0x5a 2M 64k', '-c', 'aio_write -P 0x5b 3M 64k', '-c', 'aio_flush',
      '-c', 'read -P 0x5a 2M 64k', '-c', 'read -P 0x5b 3M 64k', '-c', 'flush',
      uri]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(r.stdout.match(/^read \d+\/\d+ bytes/gm)).toHaveLength(6);
  });

  it('TRIM and WRITE_ZEROES that may punch holes become blkif discards: the file\'s allocated blocks shrink, the range reads zeroes', (ctx) => {
    if (!pvio.offers.includes('trim')) ctx.skip(); // the file system cannot punch holes: blkback offers no discard
    const before = statSync(img).blocks;
    const r = tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 6M 2M', '-c', 'flush', '-c', 'discard 6M 1M', '-c', 'write -z -u 7M 1M',
      '-c', 'read -P 0 6M 2M', uri]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    // 2 MiB = 4096 blocks of 512 bytes no longer allocated (give or take the file system's own blocks).
    expect(before - statSync(img).blocks).toBeGreaterThanOrEqual(4096 - 64);
  });

  it('unaligned WRITE, WRITE_ZEROES and TRIM from our own client read back right through blkfront', async () => {
    const c = await NbdClient.connect({ port });
    try {
      const info = await c.go('');
      expect(info.size).toBe(SIZE);
      c.startTransmission();
      const data = randomBytes(10_000);
      expect(await c.request({ type: NBD_CMD_WRITE, offset: 4 * 1048576 + 512 + 77, data })).toEqual({ error: 0 });
      const back = await c.request({ type: NBD_CMD_READ, offset: 4 * 1048576 + 512 + 77, length: 10_000 });
      expect(back.error).toBe(0);
      expect(back.data!.equals(data)).toBe(true);
      expect(await c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 4 * 1048576 + 1000, length: 7000 })).toEqual({ error: 0 });
      const z = await c.request({ type: NBD_CMD_READ, offset: 4 * 1048576 + 589, length: 10_000 });
      const want = Buffer.from(data);
      want.fill(0, 1000 - 589, 8000 - 589);
      expect(z.data!.equals(want)).toBe(true);
      if (pvio.offers.includes('trim')) expect(await c.request({ type: NBD_CMD_TRIM, offset: 5 * 1048576 + 100, length: 65536 })).toEqual({ error: 0 });
    } finally {
      c.close();
    }
  });

  it('fio --ioengine=nbd random writes verify with crc32c, two jobs on two connections', () => {
    const r = tool('fio', ['--name=pvio', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--size=4M',
      '--numjobs=2', '--offset_increment=4M', '--iodepth=8', '--verify=crc32c', '--verify_state_save=0', '--output-format=json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    // fio prints "fio: connected to NBD server" before its JSON.
    const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> };
    expect(j.jobs).toHaveLength(2);
    for (const job of j.jobs) {
      expect(job.error).toBe(0);
      expect(job.write.io_bytes).toBe(4 * 1048576);
      expect(job.read.io_bytes).toBe(4 * 1048576); // the verify pass read everything back
    }
    expect(r.stdout).not.toMatch(/verify: bad|crc32c: verify failed/);
  });

  it('qemu-img convert writes an image through the export and qemu-img compare finds it identical', () => {
    const conv = tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri]);
    expect(conv.stderr).toBe('');
    expect(conv.status).toBe(0);
    const cmp = tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
    expect(cmp.stdout).toContain('Images are identical.');
    expect(cmp.status).toBe(0);
  });

  it('SIGTERM stops the export cleanly: exit 0, nothing on stderr, and the image file equals what was written', async () => {
    expect(await stopPvio(pvio, 'SIGTERM')).toBe(0);
    expect(pvio.err()).toBe('');
    expect(pvio.out()).toMatch(/\[guest\] nbd: stopped after \d+ requests on \d+ connections \(\d+ bytes read, \d+ bytes written, 0 errors\)/);
    expect(pvio.out()).toMatch(/pvio: guest exited \(poweroff\)/);
    expect(readFileSync(img).equals(readFileSync(src))).toBe(true);
  });
});

describe('pvio up --nbd-socket --read-only', () => {
  it('serves the image read-only on a Unix socket; SIGINT stops it with exit 0', async () => {
    const img = join(dir, 'ro.img');
    const data = randomBytes(2 * 1048576 + 4096);
    writeFileSync(img, data);
    const sock = join(dir, 'nbd.sock');
    const p = await startPvio(['--disk', img, '--nbd-socket', sock, '--read-only']);
    expect(p.where).toBe(`unix:${sock}`);
    expect(p.offers).toEqual(['read-only']);
    const uri = `nbd+unix:///?socket=${sock}`;
    const e = nbdinfo(uri);
    expect(e).toMatchObject({ 'export-size': data.length, is_read_only: true, can_zero: false, can_trim: false });
    const cmp = tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, uri]);
    expect(cmp.stdout).toContain('Images are identical.');
    expect(await stopPvio(p, 'SIGINT')).toBe(0);
    expect(p.err()).toBe('');
    expect(readFileSync(img).equals(data)).toBe(true);
  });
});

describe('pvio up --nbd on a port in use', () => {
  let busy: Server;
  afterAll(() => new Promise<void>((r) => busy.close(() => r())));

  it('fails in one line on stderr with a non-zero status', async () => {
    busy = createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as { port: number }).port;
    const img = join(dir, 'busy.img');
    writeFileSync(img, Buffer.alloc(65536));
    const r = await new Promise<{ code: number | null; err: string }>((res) => {
      const c = spawn(process.execPath, [BIN, 'up', '--no-progress', '--disk', img, '--nbd', String(port)], { env });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      const t = setTimeout(() => c.kill('SIGKILL'), 30_000);
      c.on('exit', (code) => {
        clearTimeout(t);
        res({ code, err });
      });
    });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^pvio: guest crashed: .*EADDRINUSE/);
    expect(r.err.trim().split('\n')).toHaveLength(1);
  });
});
