// Operating a running machine through its control socket, as xl operates Xen: `pvio
// up --detach` returns once the machine has booted and leaves it running; then every
// command runs as its own `pvio` process against it — list, xenstore-ls/-read/-write,
// block-attach (the guest reads the new disk: its SHA-256 equals the file's) and
// block-detach, network-attach/-detach, top (the read shows in its rates), console
// (both ways, Ctrl-] detaches, ends with the guest), destroy,
// shutdown of a guest and of the
// machine — and bad input gets one line and a non-zero status (no such machine, no
// such domain, a bad name, a socket owned by another user). The socket directory is
// owner-only, the socket 0600. Each process has a deadline; XDG_RUNTIME_DIR points to
// a directory of this test, so no other machine is touched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { chownSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { eventually, guestPath, randomImage, sha256 } from './helpers.ts';

const PVIO = fileURLToPath(new URL('../toolstack/bin/pvio.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'pvio-control-'));
const runtime = join(dir, 'run');
const env = { ...process.env, XDG_RUNTIME_DIR: runtime };
const M = ['--machine', 'ctl'];

/** Runs `pvio ARGS` with a deadline. */
function pvio(args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [PVIO, ...args], { env, timeout: timeoutMs }, (e, stdout, stderr) =>
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr }));
  });
}

let up: { code: number; stdout: string; stderr: string };
beforeAll(async () => {
  const cfg = join(dir, 'm.cfg');
  writeFileSync(cfg, `name = "reader"\nmemory = 32\nvcpus = 1\nkernel = "${guestPath('hotplug-reader.ts')}"\n`);
  up = await pvio(['up', cfg, '--detach', ...M], 120_000);
}, 130_000);
afterAll(async () => {
  await pvio(['shutdown', ...M]);
  rmSync(dir, { recursive: true, force: true });
});

describe('a running machine, operated by pvio commands', () => {
  it('up --detach returns once booted; the socket is owner-only', () => {
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/^pvio: machine ctl is up \(pid \d+\)/);
    expect(statSync(join(runtime, 'pvio')).mode & 0o777).toBe(0o700);
    expect(statSync(join(runtime, 'pvio', 'ctl.sock')).mode & 0o777).toBe(0o600);
  });

  it('list shows the domains', async () => {
    const r = await pvio(['list', ...M]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^Name\s+ID\s+Mem\s+VCPUs\s+State\s+Time\(s\)$/);
    expect(lines[1]).toMatch(/^Domain-0\s+0\s+256\s+1\s+running\s+\d+\.\d$/);
    expect(lines[2]).toMatch(/^reader\s+1\s+32\s+1\s+running\s+\d+\.\d$/);
    const plain = await pvio(['list']); // the only machine: --machine may be left out
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout.split('\n')[2]).toMatch(/^reader\s+1\s/);
  });

  it('xenstore-write, -read and -ls', async () => {
    expect((await pvio(['xenstore-write', '/local/domain/1/data/note', 'hello world', ...M])).code).toBe(0);
    expect((await pvio(['xenstore-read', '/local/domain/1/data/note', ...M])).stdout).toBe('hello world\n');
    const ls = await pvio(['xenstore-ls', '/local/domain/1/data', ...M]);
    expect(ls.stdout).toBe('data = ""\n note = "hello world"\n');
    const missing = await pvio(['xenstore-read', '/local/domain/1/nope', ...M]);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
    expect(missing.stderr).toMatch(/ENOENT/);
  });

  it('block-attach: the running guest reads the new disk; block-detach removes it cleanly', async () => {
    const img = randomImage(dir, 'hot.img', 512 * 1024);
    const a = await pvio(['block-attach', 'reader', `file:${img.path},xvdb,r`, ...M]);
    expect(a.code, a.stderr).toBe(0);
    const sha = await eventually(async () => {
      const r = await pvio(['xenstore-read', '/local/domain/1/data/xvdb-sha256', ...M]);
      return r.code === 0 ? r.stdout.trim() : null;
    }, 20_000, 'the guest to read xvdb');
    expect(sha).toBe(sha256(img.data));
    const d = await pvio(['block-detach', 'reader', 'xvdb', ...M]);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toBe(''); // not forced
    const gone = await pvio(['xenstore-read', '/local/domain/0/backend/vbd/1/51728/state', ...M]);
    expect(gone.code).toBe(1);
    const busy = await pvio(['block-detach', 'reader', 'xvdb', ...M]);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toBe("pvio: dom1 has no disk xvdb\n");
  });

  it('network-attach and -detach', async () => {
    const a = await pvio(['network-attach', 'reader', 'bridge=xenbr0', ...M]);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stdout).toBe('eth0\n');
    await eventually(async () => (await pvio(['xenstore-read', '/local/domain/1/device/vif/0/state', ...M])).stdout === '4\n', 10_000, 'vif Connected');
    const d = await pvio(['network-detach', 'reader', '0', ...M]);
    expect(d.code, d.stderr).toBe(0);
    expect((await pvio(['xenstore-read', '/local/domain/1/device/vif/0/state', ...M])).code).toBe(1);
  });

  it('top: live rates; a disk read while it runs shows in them', async () => {
    const img = randomImage(dir, 'top.img', 8 << 20);
    const t = pvio(['top', '--delay', '0.4', '--iterations', '4', ...M]);
    await new Promise((r) => setTimeout(r, 300));
    expect((await pvio(['block-attach', 'reader', `file:${img.path},xvdc,r`, ...M])).code).toBe(0);
    const r = await t;
    expect(r.code, r.stderr).toBe(0);
    const screens = r.stdout.split(/\n(?=pvio top — )/);
    expect(screens).toHaveLength(4); // not a terminal: one screen after the other
    for (const s of screens) expect(s).toMatch(/^Domain-0\s+0\s+running\s+\d+\.\d\s+\d+\s+1\s+\d+\.\d\s+\d+\.\d$/m);
    // The guest read the 8 MiB disk: the MB/s of some screen, times its interval, adds up to it.
    const read = screens.map((s) => {
      const over = Number(/over (\d+\.\d+) s/.exec(s)![1]);
      const row = /^reader\/xvdc\s+\S+\s+\S+\s+(\d+\.\d)\s/m.exec(s);
      return row ? Number(row[1]) * over : 0;
    }).reduce((x, y) => x + y, 0);
    expect(read).toBeGreaterThan(0.8 * 8.39); // MB, within rounding of the 0.1 MB/s column
    expect(read).toBeLessThan(1.2 * 8.39);
    await eventually(async () => (await pvio(['xenstore-read', '/local/domain/1/data/xvdc-sha256', ...M])).stdout.trim() === sha256(img.data), 10_000, 'xvdc read');
    expect((await pvio(['block-detach', 'reader', 'xvdc', ...M])).code).toBe(0);
  });

  it('console: the guest\'s console both ways; Ctrl-] detaches; the session ends when the guest does', async () => {
    const cfg = join(dir, 'echo.cfg');
    writeFileSync(cfg, `name = "echo"\nmemory = 32\nvcpus = 1\nkernel = "${guestPath('echo-console.ts')}"\n`);
    expect((await pvio(['up', cfg, '--detach', '--machine', 'ctl3'], 120_000)).code).toBe(0);
    try {
      /** `pvio console echo` with a pipe for stdin; resolves with its output once it exits. */
      const session = () => {
        const p = spawn(process.execPath, [PVIO, 'console', 'echo', '--machine', 'ctl3'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        let errText = '';
        p.stdout.on('data', (c: Buffer) => (out += c.toString()));
        p.stderr.on('data', (c: Buffer) => (errText += c.toString()));
        const done = new Promise<number>((r) => p.once('exit', (code) => r(code ?? 1)));
        const timer = setTimeout(() => p.kill('SIGKILL'), 20_000);
        void done.then(() => clearTimeout(timer));
        /** Waits for `cond`; a timeout names what the session printed. */
        const until = (cond: () => boolean, what: string) =>
          eventually(cond, 10_000, what).catch((e: Error) => {
            throw new Error(`${e.message}; stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(errText)}`);
          });
        return { p, done, out: () => out, err: () => errText, until };
      };
      const a = session();
      await a.until(() => a.err().includes('Ctrl-] to detach'), 'the console to attach');
      a.p.stdin.write('hello console\n');
      await a.until(() => a.out().includes('echo: hello console\n'), 'the echo');
      a.p.stdin.write('\x1d');
      expect(await a.done).toBe(0);
      expect(a.err()).toMatch(/pvio: detached\n$/);
      expect((await pvio(['list', '--machine', 'ctl3'])).stdout).toMatch(/^echo\s+1\s+32\s+1\s+running/m); // still running

      const b = session();
      await b.until(() => b.err().includes('Ctrl-] to detach'), 'the console to attach again');
      b.p.stdin.write('again\n');
      await b.until(() => b.out().includes('echo: again\n'), 'the second echo');
      expect((await pvio(['shutdown', 'echo', '--machine', 'ctl3'])).code).toBe(0);
      expect(await b.done).toBe(0);
      expect(b.err()).toMatch(/pvio: echo exited\n/);
      expect(b.out()).toMatch(/shutdown requested \(poweroff\)/);
    } finally {
      await pvio(['shutdown', '--machine', 'ctl3']);
    }
  }, 90_000);

  it('bad input: one line and a non-zero status', async () => {
    const cases: Array<[string[], number, RegExp]> = [
      [['destroy', 'nosuch', ...M], 1, /^pvio: no domain named 'nosuch'\n$/],
      [['list', '--machine', 'nope'], 1, /^pvio: no machine named 'nope' is running\n$/],
      [['list', '--machine', 'bad/name'], 2, /^pvio: option '--machine' needs a name/],
      [['xenstore-read', ...M], 2, /^pvio: 'xenstore-read' needs 1 argument/],
      [['list', '--disk', 'x', ...M], 2, /^pvio: option '--disk' does not apply to 'list'\n$/],
      [['network-detach', 'reader', 'x', ...M], 1, /^pvio: bad devid 'x'/],
    ];
    for (const [args, code, msg] of cases) {
      const r = await pvio(args);
      expect(r.code, args.join(' ')).toBe(code);
      expect(r.stderr, args.join(' ')).toMatch(msg);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
  });

  it.skipIf(process.getuid?.() !== 0)('a socket owned by another user is refused (as root: a socket chowned to nobody)', async () => {
    const path = join(runtime, 'pvio', 'evil.sock');
    const srv = createServer(() => {});
    await new Promise<void>((r) => srv.listen(path, () => r()));
    try {
      chownSync(path, 65534, 65534);
      const r = await pvio(['list', '--machine', 'evil']);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe("pvio: the socket of machine 'evil' is not owned by you (uid 65534)\n");
      const several = await pvio(['list']);
      expect(several.code).toBe(1);
      expect(several.stderr).toMatch(/several machines are running \(ctl, evil\): name one with --machine NAME/);
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  it('destroy NAME ends the guest at once', async () => {
    const d = await pvio(['destroy', 'reader', ...M]);
    expect(d.code, d.stderr).toBe(0);
    await eventually(async () => !/^reader\s+1\s+32\s+1\s+running/m.test((await pvio(['list', ...M])).stdout), 10_000, 'reader gone');
  });

  it('shutdown NAME powers a guest off in order; shutdown alone stops the machine', async () => {
    const cfg = join(dir, 'm.cfg');
    const up2 = await pvio(['up', cfg, '--detach', '--machine', 'ctl2'], 120_000);
    expect(up2.code, up2.stderr).toBe(0);
    const s = await pvio(['shutdown', 'reader', '--machine', 'ctl2']);
    expect(s.code, s.stderr).toBe(0);
    expect(s.stdout).toBe(''); // it answered: not destroyed by force
    for (const m of ['ctl2', 'ctl']) {
      const stop = await pvio(['shutdown', '--machine', m]);
      expect(stop.code, stop.stderr).toBe(0);
      await eventually(async () => (await pvio(['list', '--machine', m])).stderr === `pvio: no machine named '${m}' is running\n`, 20_000, `${m} to stop`);
    }
  }, 60_000);
});
