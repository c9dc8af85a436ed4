/**
 * The `pvio` command. `pvio up [CONFIG] [--disk PATH]` boots a machine (hypervisor,
 * dom0 with xenstored, the console daemon and blkback, and one guest), shows
 * progress while the guest reads its disk, prints what the guest printed (through
 * its console ring) and a summary, and exits once every worker has exited.
 *
 * With no CONFIG, the built-in default machine: the default guest
 * (toolstack/guests/default.ts) with the Node executable attached read-only as
 * `xvda` (or `--disk PATH`) and a new sparse scratch image as `xvdb`.
 *
 * With `--disk FILE --nbd PORT` (or `--nbd-socket PATH`), the NBD guest
 * (toolstack/guests/nbd.ts) with FILE attached writable as `xvda` (read-only with
 * `--read-only`): it serves the disk over NBD and prints its listening line; SIGINT
 * or SIGTERM stops it cleanly (connections ended, disk flushed and closed, domain
 * powered off) and the command exits 0.
 *
 * Bad input (a missing or unreadable disk, a malformed config, an unknown option)
 * is one line on stderr and a non-zero exit, with no worker started. SIGINT tears
 * every domain down and exits with 130.
 */
import { accessSync, closeSync, constants, createReadStream, openSync, statSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PvioError } from '../rings/errors.ts';
import { RawFileStore } from '../blkback/raw-file-store.ts';
import { parseCli, USAGE, type ControlCommand, type UpCommand } from './args.ts';
import { ControlError, ControlServer, chooseMachine, controlRequest, controlStream, machineNames, runtimeDir } from './control.ts';
import { formatControlReply, formatTop, machineHandlers } from './control-ops.ts';
import { loadConfig, parseDiskSpec, type DiskSpec } from './config.ts';
import { Machine, type GuestSpec, type MachineSnapshot } from './machine.ts';
import { createProgress } from './progress.ts';
import type { DefaultGuestResult } from './guests/default.ts';
import type { NbdGuestArgs } from './guests/nbd.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_GUEST = join(ROOT, 'toolstack', 'guests', 'default.ts');
const NBD_GUEST = join(ROOT, 'toolstack', 'guests', 'nbd.ts');
/** How long the NBD guest may take to answer its requests in flight and stop (ms). */
const NBD_STOP_TIMEOUT_MS = 30_000;

/** Where pvio keeps its scratch images: `$PVIO_DATA_DIR`, else `$XDG_DATA_HOME/pvio`, else `~/.local/share/pvio`. */
export function dataDir(): string {
  return process.env.PVIO_DATA_DIR ?? join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'pvio');
}

/** One-line description of a filesystem error for a path. */
function describeFsError(path: string, e: NodeJS.ErrnoException): string {
  const what: Record<string, string> = { ENOENT: 'no such file', EACCES: 'permission denied', EISDIR: 'is a directory', ENOTDIR: 'not a directory' };
  return `cannot read disk ${path}: ${e.code ?? 'error'}${e.code && what[e.code] ? ` (${what[e.code]})` : ''}`;
}

/**
 * Checks that every disk is a readable regular file before anything boots.
 * @returns notes to print (sizes that are not a multiple of 512).
 * @throws PvioError naming the first bad path.
 */
function checkDisks(disks: readonly DiskSpec[]): string[] {
  const notes: string[] = [];
  for (const d of disks) {
    try {
      const st = statSync(d.path);
      if (!st.isFile()) throw Object.assign(new Error('not a file'), { code: st.isDirectory() ? 'EISDIR' : 'EINVAL' });
      accessSync(d.path, d.readOnly ? constants.R_OK : constants.R_OK | constants.W_OK);
      if (st.size % 512 !== 0) {
        notes.push(`${d.vdev}: ${d.path} is ${st.size} bytes, not a multiple of 512: the disk has floor(${st.size}/512) = ${Math.floor(st.size / 512)} sectors`);
      }
    } catch (e) {
      throw new PvioError('PVIO_ERR_DISK', describeFsError(d.path, e as NodeJS.ErrnoException));
    }
  }
  return notes;
}

/** SHA-256 of the first `bytes` bytes of a file, computed on the host. */
function hostDigest(path: string, bytes: number): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    if (bytes === 0) return res(h.digest('hex'));
    createReadStream(path, { start: 0, end: bytes - 1 }).on('data', (c) => h.update(c)).on('end', () => res(h.digest('hex'))).on('error', rej);
  });
}

function version(): string {
  return (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

/** Builds the guest of `pvio up` from the command line. */
function guestFromCli(cmd: UpCommand): { spec: GuestSpec; notes: string[]; isDefault: boolean } {
  if (cmd.config) {
    const cfg = loadConfig(cmd.config);
    const disks = [...cfg.disks];
    if (cmd.disk) {
      if (disks.some((d) => d.vdev === 'xvda')) throw new PvioError('PVIO_ERR_USAGE', `--disk: ${cmd.config} already has an xvda`);
      disks.unshift(parseDiskSpec(`${resolve(cmd.disk)},xvda,r`, process.cwd()));
    }
    return { spec: { name: cfg.name, memoryMiB: cfg.memoryMiB, vcpus: cfg.vcpus, kernel: cfg.kernel, extra: cfg.extra, disks, vifs: cfg.vifs }, notes: checkDisks(disks), isDefault: false };
  }
  if (cmd.nbd) {
    const xvda = parseDiskSpec(`${resolve(cmd.disk!)},xvda,${cmd.nbd.readOnly ? 'r' : 'w'}`, process.cwd());
    const args: NbdGuestArgs = { listen: cmd.nbd.listen };
    return { spec: { name: 'guest', memoryMiB: 64, vcpus: 1, kernel: NBD_GUEST, args, disks: [xvda] }, notes: checkDisks([xvda]), isDefault: false };
  }
  const xvda = parseDiskSpec(`${resolve(cmd.disk ?? process.execPath)},xvda,r`, process.cwd());
  const notes = checkDisks([xvda]);
  const scratch = join(dataDir(), 'scratch.img');
  const scratchMiB = cmd.scratchMiB ?? 64;
  RawFileStore.createSparse(scratch, scratchMiB * 1048576);
  const xvdb = parseDiskSpec(`${scratch},xvdb,w`, process.cwd());
  return {
    spec: { name: 'guest', memoryMiB: 64, vcpus: 1, kernel: DEFAULT_GUEST, args: { writeMiB: Math.min(16, scratchMiB) }, disks: [xvda, xvdb] },
    notes, isDefault: true,
  };
}

/** Set (to 1) in the environment of the background `pvio up` that `--detach` starts. */
const DETACHED_ENV = 'PVIO_DETACHED_CHILD';

/**
 * Opens the machine's control socket: `--machine NAME`, else `pvio` (or `pvio-2`,
 * `pvio-3`, ... while that name is taken by another running machine).
 * @throws ControlError when the name is taken (given with --machine) or no socket can be made.
 */
async function openControl(cmd: UpCommand, machine: Machine, stop: () => void): Promise<{ name: string; server: ControlServer }> {
  const handlers = machineHandlers(machine, stop);
  if (cmd.machine) return { name: cmd.machine, server: await ControlServer.listen(cmd.machine, handlers) };
  for (let i = 1; ; i++) {
    const name = i === 1 ? 'pvio' : `pvio-${i}`;
    try {
      return { name, server: await ControlServer.listen(name, handlers) };
    } catch (e) {
      if (!(e instanceof ControlError) || !/already running/.test(e.message) || i >= 99) throw e;
    }
  }
}

/**
 * `pvio up --detach`: starts the same `pvio up` in the background (its output in
 * `<machine>.log` beside the socket) and returns once its control socket answers,
 * printing the machine's name; 1 with the log's last line when it does not come up.
 */
async function detach(cmd: UpCommand, argv: string[], err: (m: string) => void): Promise<number> {
  const name = cmd.machine ?? 'pvio';
  let log: string;
  let fd: number;
  try {
    log = join(runtimeDir(), `${name}.log`);
    fd = openSync(log, 'w', 0o600);
  } catch (e) {
    err(`cannot detach: ${(e as Error).message}`);
    return 1;
  }
  const child = spawn(process.execPath, [join(ROOT, 'toolstack', 'bin', 'pvio.mjs'), ...argv], {
    detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, [DETACHED_ENV]: '1' }, cwd: process.cwd(),
  });
  closeSync(fd);
  let exited: number | null = null;
  child.once('exit', (code) => (exited = code ?? 1));
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline && exited === null) {
    const up = cmd.machine
      ? await controlRequest(name, 'ping', [], 1000).then(() => true, () => false)
      : await pingAny(child.pid!);
    if (up) {
      child.unref();
      process.stdout.write(`pvio: machine ${up === true ? name : up} is up (pid ${child.pid}); output in ${log}\n`);
      return 0;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const last = readFileSync(log, 'utf8').trim().split('\n').pop() ?? '';
  err(`the machine did not come up${exited !== null ? ` (exit status ${exited})` : ''}${last ? `: ${last.replace(/^pvio: /, '')}` : ''}`);
  if (exited === null) child.kill('SIGTERM');
  return 1;
}

/** Without --machine: the name of the running machine served by process `pid` (asked with the `pid` command), or false. */
async function pingAny(pid: number): Promise<string | false> {
  for (const n of machineNames()) {
    const v = await controlRequest(n, 'pid', [], 1000).catch(() => null);
    if (v === pid) return n;
  }
  return false;
}

/**
 * `pvio top`: a snapshot every `--delay` seconds (default 1), each screen the rates
 * since the last; on a terminal the screen is redrawn in place, else each screen is
 * printed after the last. Ends after `--iterations` screens, or on Ctrl-C (0), or
 * when the machine stops (1, with the reason).
 */
async function top(name: string, cmd: ControlCommand): Promise<number> {
  const delayMs = (cmd.delaySec ?? 1) * 1000;
  const tty = process.stdout.isTTY === true;
  let stop = false;
  const onInt = () => {
    stop = true;
  };
  process.once('SIGINT', onInt);
  try {
    let prev = (await controlRequest(name, 'stats', [])) as MachineSnapshot;
    for (let i = 0; !stop && (cmd.iterations === undefined || i < cmd.iterations); i++) {
      await new Promise((r) => setTimeout(r, delayMs));
      if (stop) break;
      const now = (await controlRequest(name, 'stats', [])) as MachineSnapshot;
      const screen = formatTop(prev, now);
      process.stdout.write(tty ? `\x1b[H\x1b[2J${screen}` : `${i > 0 ? '\n' : ''}${screen}`);
      prev = now;
    }
    return 0;
  } finally {
    process.off('SIGINT', onInt);
  }
}

/** Ctrl-]: ends a console session, as in xl console and telnet. */
const CONSOLE_ESCAPE = 0x1d;

/**
 * `pvio console NAME`: the guest's console both ways — its lines on stdout, stdin
 * typed at it (on a terminal in raw mode, Enter sent as a newline) — until Ctrl-]
 * (0), stdin ends (0), or the guest exits (0, said on stderr).
 */
async function consoleSession(machine: string, guest: string, err: (m: string) => void): Promise<number> {
  const stdin = process.stdin;
  let ended = false;
  const conn = await controlStream(machine, 'console', [guest], (m) => {
    const x = m as { type?: string; line?: string; error?: string };
    if (x.type === 'output') process.stdout.write(`${x.line}\n`);
    else if (x.type === 'error') err(x.error ?? 'console error');
    else if (x.type === 'exit') {
      ended = true;
      err(`${guest} exited`);
      conn.close();
    }
  });
  const tty = stdin.isTTY === true;
  if (tty) stdin.setRawMode(true);
  process.stderr.write(`pvio: console of ${guest} (Ctrl-] to detach)\n`);
  const onData = (chunk: Buffer) => {
    const i = chunk.indexOf(CONSOLE_ESCAPE);
    const part = i >= 0 ? chunk.subarray(0, i) : chunk;
    if (part.length > 0) conn.send({ type: 'input', data: tty ? part.toString('utf8').replace(/\r/g, '\n') : part.toString('utf8') });
    if (i >= 0) conn.close();
  };
  const onEnd = () => conn.close();
  stdin.on('data', onData);
  stdin.once('end', onEnd);
  try {
    await conn.closed;
  } finally {
    stdin.off('data', onData);
    stdin.off('end', onEnd);
    if (tty) stdin.setRawMode(false);
    stdin.pause();
  }
  if (!ended) process.stderr.write('pvio: detached\n');
  return 0;
}

/** `pvio list`, `pvio xenstore-read PATH`, ...: one request to a running machine, its answer printed. */
async function runControlCommand(cmd: ControlCommand, err: (m: string) => void): Promise<number> {
  try {
    const name = chooseMachine(cmd.machine);
    if (cmd.op === 'top') return await top(name, cmd);
    if (cmd.op === 'console') return await consoleSession(name, cmd.args[0], err);
    // Paths in a disk spec are the caller's: the machine resolves them against its cwd.
    const args = cmd.op === 'block-attach' ? [...cmd.args, process.cwd()]
      // sched-credit: NAME, WEIGHT, CAP ('' where not given).
      : cmd.op === 'sched-credit' ? [cmd.args[0] ?? '', cmd.weight === undefined ? '' : String(cmd.weight), cmd.cap === undefined ? '' : String(cmd.cap)]
        : cmd.args;
    const value = await controlRequest(name, cmd.op, args);
    process.stdout.write(formatControlReply(cmd.op, value, cmd.args));
    return 0;
  } catch (e) {
    err((e as Error).message);
    return 1;
  }
}

/**
 * Runs the `pvio` command.
 * @returns the process exit status (0 ok, 1 failure, 2 usage, 130 interrupted).
 */
export async function main(argv: string[]): Promise<number> {
  const err = (msg: string) => process.stderr.write(`pvio: ${msg}\n`);
  let cmd;
  try {
    cmd = parseCli(argv);
  } catch (e) {
    err((e as Error).message);
    return 2;
  }
  if (cmd.command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (cmd.command === 'version') {
    process.stdout.write(`pvio ${version()}\n`);
    return 0;
  }
  if (cmd.command === 'control') return runControlCommand(cmd, err);
  if (cmd.command === 'bench') {
    if (cmd.what === 'blk') return (await import('../bench/blk.ts')).benchBlk(cmd.argv);
    if (cmd.what === 'net') return (await import('../bench/net.ts')).benchNet(cmd.argv);
    if (cmd.what === 'mmu') return (await import('../bench/mmu.ts')).benchMmu(cmd.argv);
    const { benchRing } = await import('../bench/ring.ts');
    return benchRing(cmd.argv);
  }
  if (cmd.detach && process.env[DETACHED_ENV] !== '1') return detach(cmd, argv, err);
  const detachedChild = process.env[DETACHED_ENV] === '1';
  let plan;
  try {
    plan = guestFromCli(cmd);
  } catch (e) {
    if (e instanceof PvioError) {
      err(e.message);
      return e.code === 'PVIO_ERR_USAGE' ? 2 : 1;
    }
    throw e;
  }
  const say = (s: string) => {
    if (!cmd.quiet) process.stdout.write(`${s}\n`);
  };
  for (const n of plan.notes) say(`pvio: note: ${n}`);

  const t0 = performance.now();
  let progress: ReturnType<typeof createProgress> | null = null;
  // Guest console lines come through dom0; printing them here keeps them off a live bar's line.
  const machine = await Machine.boot({
    dom0Vcpus: cmd.dom0Vcpus,
    pcap: cmd.pcap,
    onConsole: (domain, line) => {
      const text = `[${domain}] ${line}\n`;
      if (progress) progress.log(text);
      else process.stdout.write(text);
    },
  });
  // The control socket: `pvio list`, `pvio block-attach`, ... talk to this machine.
  let stopAsked!: () => void;
  const stopped = new Promise<void>((r) => (stopAsked = r));
  let stopRequested = false;
  const stopMachine = () => {
    stopRequested = true;
    stopAsked();
    void machine.shutdown();
  };
  const control = await openControl(cmd, machine, stopMachine).catch((e: Error) => {
    err(`no control socket: ${e.message}`);
    return null;
  });
  if (!control && detachedChild) {
    await machine.shutdown();
    return 1;
  }
  let interrupted = false;
  /** Set once the NBD guest runs: asks it to stop cleanly. */
  let stopNbd: (() => void) | null = null;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    if (stopNbd) {
      say(`pvio: ${signal}: stopping the NBD export`);
      stopNbd();
      return;
    }
    process.stderr.write('pvio: interrupted, tearing every domain down\n');
    void machine.shutdown();
  };
  process.on('SIGINT', onSignal);
  if (cmd.nbd || detachedChild) process.on('SIGTERM', onSignal);
  let poll: NodeJS.Timeout | null = null;
  try {
    const disks = plan.spec.disks ?? [];
    const xvda = disks.find((d) => d.vdev === 'xvda');
    const xvdaBytes = xvda ? Math.floor(statSync(xvda.path).size / 512) * 512 : 0;
    const digest = xvda && plan.isDefault ? hostDigest(xvda.path, xvdaBytes) : null;
    if (control) say(`pvio: machine ${control.name}: control socket ${control.server.path}`);
    say(`pvio: booted the hypervisor and Domain-0 in ${((performance.now() - t0) / 1000).toFixed(2)} s; starting ${plan.spec.name} ` +
      `with ${disks.map((d) => `${d.vdev}=${d.path}${d.readOnly ? ' (r)' : ' (w)'}`).join(', ') || 'no disks'}`);
    const g = await machine.createGuest(plan.spec);
    if (cmd.nbd) {
      stopNbd = () => void g.call('stop', undefined, NBD_STOP_TIMEOUT_MS).catch((e: Error) => {
        err(`the NBD guest did not stop: ${e.message}`);
        void machine.shutdown();
      });
    }
    if (xvda && plan.isDefault) {
      progress = createProgress({ total: xvdaBytes, label: 'xvda', enabled: cmd.progress && !cmd.quiet });
      const key = `${plan.spec.name}/xvda`;
      poll = setInterval(() => {
        void machine.dom0Stats().then((s) => {
          const d = (s.disks as Record<string, { bytesRead: number }>)[key];
          if (d && progress) progress.update(Math.min(d.bytesRead, xvdaBytes));
        }).catch(() => undefined);
      }, 200);
    }
    const exit = await g.exit;
    if (poll) clearInterval(poll);
    if (stopRequested) {
      say(`pvio: machine stopped ('pvio shutdown')`);
      return 0;
    }
    if (progress) {
      if (exit.reason === 0) progress.update(xvdaBytes);
      progress.stop();
      progress = null;
    }
    if (interrupted && !(stopNbd && exit.reason === 0)) return 130;
    if (exit.reason !== 0) {
      err(`${exit.name} crashed: ${exit.error ?? 'unknown error'}`);
      return 1;
    }
    let ok = true;
    if (plan.isDefault) {
      const r = exit.value as DefaultGuestResult;
      const [dom0, hv] = await Promise.all([machine.dom0Stats(), machine.hypervisorStats()]);
      const be = (dom0.disks as Record<string, { bytesRead: number; bytesWritten: number; requests: number; notifications: number; grantMaps: number; mapHypercalls: number }>);
      const ba = be[`${plan.spec.name}/xvda`];
      const bb = be[`${plan.spec.name}/xvdb`];
      if (r.xvda && digest) {
        const host = await digest;
        const same = host === r.xvda.sha256;
        ok &&= same;
        say(`pvio: host sha256 of the first ${xvdaBytes} bytes of ${xvda!.path}: ${host} — ${same ? 'equal to the guest\'s (OK)' : 'DIFFERENT from the guest\'s'}`);
        const carried = ba?.bytesRead ?? 0;
        ok &&= carried === xvdaBytes;
        say(`pvio: blkback carried ${carried} bytes of xvda over the ring; the disk has ${xvdaBytes} bytes (${carried === xvdaBytes ? 'equal' : 'DIFFERENT'})`);
      }
      if (r.xvdb) ok &&= r.xvdb.verified;
      const requests = (ba?.requests ?? 0) + (bb?.requests ?? 0);
      const beNotes = (ba?.notifications ?? 0) + (bb?.notifications ?? 0);
      const hc = hv.hypercalls as Record<string, number>;
      say(`pvio: blkback served ${requests} requests; notifications per request: frontend→backend ${r.frontend.notificationsPerRequest.toFixed(3)}, ` +
        `backend→frontend ${(requests ? beNotes / requests : 0).toFixed(3)}`);
      say(`pvio: hypercalls by kind ${JSON.stringify(hc)}; grant maps ${hv.grantMaps as number} (in ${(ba?.mapHypercalls ?? 0) + (bb?.mapHypercalls ?? 0)} batched map calls), unmaps ${hv.grantUnmaps as number}`);
    }
    say(`pvio: ${exit.name} exited (poweroff) after ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    if (detachedChild && !interrupted) {
      // Detached: the machine stays up for commands until 'pvio shutdown' (or SIGTERM).
      say('pvio: the machine stays up until \'pvio shutdown\'');
      await Promise.race([stopped, new Promise<void>((r) => process.once('SIGTERM', () => r()))]);
    }
    return ok ? 0 : 1;
  } catch (e) {
    err(e instanceof Error ? e.message : String(e));
    return 1;
  } finally {
    if (poll) clearInterval(poll);
    progress?.stop();
    await control?.server.close();
    await machine.shutdown();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
