/**
 * Command-line parsing for the `pvio` command, on `node:util` `parseArgs`.
 *
 * ```
 * pvio up [CONFIG] [--disk PATH] [--scratch-mib N] [--pcap FILE] [--quiet] [--no-progress]
 * pvio up --disk PATH (--nbd PORT | --nbd-socket PATH) [--read-only] [--quiet]
 * pvio help
 * pvio --version
 * ```
 *
 * Parsing is pure: nothing is read, opened or printed here.
 */
import { parseArgs } from 'node:util';
import { PvioError } from '../rings/errors.ts';
import type { NbdListen } from './nbd/server.ts';
import { CONTROL_ARITY, CONTROL_COMMANDS, type ControlCommandName } from './control-ops.ts';
import { MACHINE_NAME } from './control.ts';

/** Usage text printed by `pvio help` (and after a usage error). Ends with a newline. */
export const USAGE = `\
Usage:
  pvio up [CONFIG] [options]   boot the guest domain described by CONFIG (an xl-style
                               config file) and run it until every domain has exited
  pvio up --disk FILE --nbd PORT
                               serve FILE (attached writable as xvda) over NBD on
                               127.0.0.1:PORT through the PV path until Ctrl-C/SIGTERM
  pvio bench ring [options]    the ring benchmark: pvio against a minimal ring, MessagePort
                               and ringbuf.js (--json FILE, --svg FILE, --quick; see bench/README.md)
  pvio bench blk [options]     the disk benchmark: pvio's virtual disk against readSync,
                               FileHandle and fio over NBD (--json FILE, --svg FILE, --quick)
  pvio bench net [options]     the network benchmark: domU → bridge → domU through pvio against
                               relayed MessagePort and SAB-ring baselines (--json FILE, --svg FILE, --quick)
  pvio bench mmu [options]     the CPU/MMU model: PV batched and single updates, shadow paging and
                               trap-and-emulate on three workloads (--json FILE, --svg FILE, --quick)
  pvio list                    the running machine's domains (id, name, state, memory, vCPUs, busy time)
  pvio xenstore-ls [PATH]      its XenStore tree below PATH (default /)
  pvio xenstore-read PATH      a XenStore node's value
  pvio xenstore-write PATH VALUE
  pvio block-attach NAME SPEC  attach a disk to the running guest NAME (SPEC as in a config:
                               'file:PATH,xvdX,r|w'); its kernel connects it
  pvio block-detach NAME xvdX  detach it (the guest closes it first)
  pvio network-attach NAME [SPEC]
                               attach a vif (SPEC as in a config's vif = [...]); prints eth<N>
  pvio network-detach NAME N   detach vif eth<N>
  pvio mem-set NAME SIZE       set the guest NAME's memory target (SIZE in MiB, or with a
                               unit b/k/m/g/t, as xl mem-set); its balloon driver follows it
  pvio destroy NAME            destroy the guest NAME at once
  pvio shutdown [NAME]         ask the guest NAME to power off (destroyed after 10 s if it
                               does not), or, without NAME, stop the whole machine
  pvio console NAME            the guest NAME's console, both ways (Ctrl-] detaches)
  pvio top [--delay S] [--iterations N]
                               live per-domain, per-disk and per-vif rates, refreshed in place
  pvio sched-credit [NAME] [-w WEIGHT] [-c CAP]
                               a domain's credit-scheduler parameters (every domain's
                               without NAME), or set them, as xl sched-credit: WEIGHT
                               1 to 65535 (default 256), its share of hypervisor work
                               and of dom0's disk service when contended; CAP the most
                               hypervisor time its hypercalls take, in % of one CPU
                               (0 = none, at most 100 x its vCPUs)
  pvio help                    show this help
  pvio --version               print the version

Options for 'up':
  --disk PATH         attach the raw image PATH to the guest
  --scratch-mib N     size of the scratch disk, in MiB (a whole number, at least 1)
  --pcap FILE         capture every frame crossing dom0's bridge to FILE, in pcap
                      format (for tcpdump -r or Wireshark)
  -q, --quiet         print only the guest's console and errors
  --no-progress       do not show progress bars
  --nbd PORT          run the NBD guest: serve --disk FILE on 127.0.0.1:PORT (0 picks a
                      free port; the listening line names it), e.g. for nbdinfo, qemu-img,
                      qemu-io or fio at nbd://127.0.0.1:PORT
  --nbd-socket PATH   the same on the Unix socket PATH (nbd+unix:///?socket=PATH)
  --read-only         with --nbd or --nbd-socket: attach FILE read-only
  --machine NAME      the machine's name (default pvio): its control socket is
                      $XDG_RUNTIME_DIR/pvio/NAME.sock (else /tmp/pvio-UID/NAME.sock)
  --detach            return once the machine has booted; it runs in the background
                      (its output in NAME.log beside the socket) until 'pvio shutdown'
  --dom0-vcpus N      dom0's vCPUs, 1 to 32 (default 1; Xen's dom0_max_vcpus): with
                      several, queue N of a multi-queue disk is served by dom0 vCPU
                      N mod this number

Options for the commands on a running machine (list ... shutdown):
  --machine NAME      which machine (default: the only one running)

Options anywhere:
  -h, --help          show this help
  --version           print the version
`;

/**
 * A command line that cannot be understood: unknown option or command, an option
 * without its value, a bad `--scratch-mib`. `message` is one line, e.g.
 * `unknown option '--frob'`. Code `PVIO_ERR_USAGE`.
 */
export class UsageError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_USAGE', message);
  }
}

/** What `pvio up` was asked to do. */
export interface UpCommand {
  command: 'up';
  /** Config file path as given (not resolved, not checked); absent when not given. */
  config?: string;
  /** `--disk PATH`: image to attach, as given; absent when not given. */
  disk?: string;
  /** `--scratch-mib N`: scratch disk size in MiB, an integer ≥ 1; absent when not given. */
  scratchMiB?: number;
  /** `--quiet` / `-q`. */
  quiet: boolean;
  /** False with `--no-progress`. */
  progress: boolean;
  /**
   * `--nbd PORT` / `--nbd-socket PATH` (with `--read-only`): serve `disk` over NBD
   * from the NBD guest; absent otherwise. Only with `disk` and without `config`.
   */
  nbd?: { listen: NbdListen; readOnly: boolean };
  /** `--dom0-vcpus N`: dom0's vCPUs, 1..{@link MAX_DOM0_VCPUS}; absent when not given (1). */
  dom0Vcpus?: number;
  /**
   * `--pcap FILE`: where to write, in pcap format, every frame that crosses dom0's
   * bridge; the path as given (not resolved, not checked, never empty); absent when
   * not given (no capture).
   */
  pcap?: string;
  /** `--machine NAME`: the machine's name for its control socket (default `pvio`). */
  machine?: string;
  /** `--detach`: return once the machine has booted; it runs on in the background until `pvio shutdown`. */
  detach: boolean;
}

/** Most vCPUs a domain may have (the hypervisor's limit). */
export const MAX_DOM0_VCPUS = 32;

/** `pvio bench WHAT [ARGS...]`: the benchmark's own arguments are parsed by the benchmark. */
export interface BenchCommand {
  command: 'bench';
  /** Which benchmark (`ring`, `blk`, `net` or `mmu`). */
  what: string;
  /** The arguments after WHAT, untouched. */
  argv: string[];
}

/** `pvio list`, `pvio xenstore-read PATH`, ...: a request to a running machine (toolstack/control-ops.ts). */
export interface ControlCommand {
  command: 'control';
  op: ControlCommandName;
  /** Its positional arguments, as given. */
  args: string[];
  /** `--machine NAME`; absent: the only machine running. */
  machine?: string;
  /** `top`: `--delay S`, seconds between screens (default 1). */
  delaySec?: number;
  /** `top`: `--iterations N`, screens before it exits (default: until Ctrl-C). */
  iterations?: number;
  /**
   * `sched-credit`: `--weight W` / `-w W` and `--cap C` / `-c C`, whole numbers as
   * given (their ranges are the hypervisor's to check: EINVAL); absent when not given.
   */
  weight?: number;
  cap?: number;
}

/** A parsed command line: see {@link parseCli}. */
export type Cli = UpCommand | BenchCommand | ControlCommand | { command: 'help' } | { command: 'version' };

/** Largest `--scratch-mib`: its size in bytes must stay an exact JS number (2^53). */
const MAX_SCRATCH_MIB = 2 ** 33;

const OPTIONS = {
  disk: { type: 'string' },
  'scratch-mib': { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  'no-progress': { type: 'boolean' },
  nbd: { type: 'string' },
  'nbd-socket': { type: 'string' },
  'read-only': { type: 'boolean' },
  'dom0-vcpus': { type: 'string' },
  pcap: { type: 'string' },
  machine: { type: 'string' },
  detach: { type: 'boolean' },
  delay: { type: 'string' },
  iterations: { type: 'string' },
  weight: { type: 'string', short: 'w' },
  cap: { type: 'string', short: 'c' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

/** Quotes a user-supplied string for a one-line message. */
function q(s: string): string {
  return `'${s.replace(/[\\']/g, (c) => '\\' + c).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0'))}'`;
}

/**
 * Parses `pvio`'s arguments (`process.argv.slice(2)`).
 *
 * `--help`/`-h` anywhere gives `{ command: 'help' }`, as does an empty command line
 * or `pvio help [...]`; `--version` anywhere gives `{ command: 'version' }` (both
 * only once every option is known). Options may come before or after the command
 * and the config; `--opt=value` works too, and `--` ends the options. Each option
 * may be given once.
 *
 * @param argv the arguments after the script name
 * @returns the command and, for `up`, its settings (`quiet` false and `progress`
 *   true unless `--quiet` / `--no-progress` were given)
 * @throws UsageError for an unknown option (`unknown option '--frob'`), an unknown
 *   command (`unknown command 'frob'`), options without a command, an option's
 *   missing or empty value (`option '--disk' needs a value`, `option '--pcap' needs
 *   a value`), a value given to a flag, an option given twice, a `--scratch-mib`
 *   that is not a whole number of MiB ≥ 1, an extra argument, a `--nbd` port that is not 0..65535, or `--nbd`/`--nbd-socket`
 *   given together, with CONFIG, with `--scratch-mib` or without `--disk` (or
 *   `--read-only` without either)
 */
export function parseCli(argv: string[]): Cli {
  if (argv[0] === 'bench') {
    if (argv[1] !== 'ring' && argv[1] !== 'blk' && argv[1] !== 'net' && argv[1] !== 'mmu') {
      throw new UsageError(argv[1] === undefined ? "bench needs a benchmark name (try 'pvio bench ring', 'pvio bench blk', 'pvio bench net' or 'pvio bench mmu')"
        : `unknown benchmark ${q(argv[1])} (try 'pvio bench ring', 'pvio bench blk', 'pvio bench net' or 'pvio bench mmu')`);
    }
    return { command: 'bench', what: argv[1], argv: argv.slice(2) };
  }
  let tokens;
  try {
    // strict: false, so that every problem is reported by us, in one line, and the
    // first one in argv order.
    ({ tokens } = parseArgs({ args: argv, options: OPTIONS, strict: false, allowPositionals: true, tokens: true }));
  } catch (e) {
    throw new UsageError(String((e as Error).message).split('\n')[0]!);
  }

  const seen = new Map<string, string | true>();
  const positionals: string[] = [];
  for (const t of tokens) {
    if (t.kind === 'positional') {
      positionals.push(t.value);
      continue;
    }
    if (t.kind === 'option-terminator') continue;
    if (!Object.hasOwn(OPTIONS, t.name)) throw new UsageError(`unknown option ${q(t.rawName)}`);
    const spec = OPTIONS[t.name as keyof typeof OPTIONS];
    const long = `--${t.name}`;
    if (seen.has(t.name)) throw new UsageError(`option '${long}' is given more than once`);
    if (spec.type === 'boolean') {
      if (t.value !== undefined) throw new UsageError(`option '${long}' does not take a value`);
      seen.set(t.name, true);
    } else {
      // `--disk --quiet`: parseArgs took the next option as the value.
      if (t.value === undefined || (!t.inlineValue && /^--?[A-Za-z]/.test(t.value))) {
        throw new UsageError(`option '${long}' needs a value`);
      }
      if (t.value === '') throw new UsageError(`option '${long}' needs a value`);
      seen.set(t.name, t.value);
    }
  }

  if (seen.has('help')) return { command: 'help' };
  if (seen.has('version')) return { command: 'version' };

  const [command, ...rest] = positionals;
  if (command === undefined) {
    if (argv.length === 0) return { command: 'help' };
    throw new UsageError("missing command (try 'pvio help')");
  }
  if (command === 'help') return { command: 'help' };
  const machine = seen.get('machine');
  if (typeof machine === 'string' && !MACHINE_NAME.test(machine)) {
    throw new UsageError(`option '--machine' needs a name of letters, digits, '-', '_' and '.', got ${q(machine)}`);
  }
  if ((CONTROL_COMMANDS as readonly string[]).includes(command)) {
    const op = command as ControlCommandName;
    const own = op === 'top' ? ['machine', 'delay', 'iterations'] : op === 'sched-credit' ? ['machine', 'weight', 'cap'] : ['machine'];
    for (const name of seen.keys()) if (!own.includes(name)) throw new UsageError(`option '--${name}' does not apply to '${op}'`);
    const [least, most] = CONTROL_ARITY[op];
    if (rest.length < least) throw new UsageError(`'${op}' needs ${least === most ? least : `at least ${least}`} argument${least === 1 ? '' : 's'} (try 'pvio help')`);
    if (rest.length > most) throw new UsageError(`unexpected argument ${q(rest[most]!)}: '${op}' takes ${most === 0 ? 'none' : `at most ${most}`}`);
    const out: ControlCommand = { command: 'control', op, args: rest, ...(typeof machine === 'string' ? { machine } : {}) };
    const delay = seen.get('delay');
    if (typeof delay === 'string') {
      const n = /^[0-9]+(\.[0-9]+)?$/.test(delay) ? Number(delay) : NaN;
      if (!(n >= 0.1 && n <= 3600)) throw new UsageError(`option '--delay' needs seconds from 0.1 to 3600, got ${q(delay)}`);
      out.delaySec = n;
    }
    const it = seen.get('iterations');
    if (typeof it === 'string') {
      const n = /^[0-9]{1,9}$/.test(it) ? Number(it) : NaN;
      if (!(n >= 1)) throw new UsageError(`option '--iterations' needs a whole number from 1, got ${q(it)}`);
      out.iterations = n;
    }
    for (const name of ['weight', 'cap'] as const) {
      const v = seen.get(name);
      if (typeof v !== 'string') continue;
      if (!/^[0-9]{1,9}$/.test(v)) throw new UsageError(`option '--${name}' needs a whole number, got ${q(v)}`);
      if (rest[0] === undefined) throw new UsageError(`option '--${name}' needs the domain's NAME`);
      out[name] = Number(v);
    }
    return out;
  }
  if (command !== 'up') throw new UsageError(`unknown command ${q(command)} (try 'pvio help')`);

  if (rest.length > 1) throw new UsageError(`unexpected argument ${q(rest[1]!)}: 'up' takes one CONFIG`);
  const out: UpCommand = {
    command: 'up',
    quiet: seen.has('quiet'),
    progress: !seen.has('no-progress'),
    detach: seen.has('detach'),
  };
  if (typeof machine === 'string') out.machine = machine;
  if (rest[0] !== undefined) {
    if (rest[0] === '') throw new UsageError('CONFIG must not be empty');
    out.config = rest[0];
  }
  const disk = seen.get('disk');
  if (typeof disk === 'string') out.disk = disk;
  const scratch = seen.get('scratch-mib');
  if (typeof scratch === 'string') {
    const n = /^[0-9]+$/.test(scratch) ? Number(scratch) : NaN;
    if (!(n >= 1 && n <= MAX_SCRATCH_MIB)) {
      throw new UsageError(`option '--scratch-mib' needs a whole number of MiB from 1 to ${MAX_SCRATCH_MIB}, got ${q(scratch)}`);
    }
    out.scratchMiB = n;
  }
  const pcap = seen.get('pcap');
  if (typeof pcap === 'string') out.pcap = pcap;
  const dom0Vcpus = seen.get('dom0-vcpus');
  if (typeof dom0Vcpus === 'string') {
    const n = /^[0-9]{1,3}$/.test(dom0Vcpus) ? Number(dom0Vcpus) : NaN;
    if (!(n >= 1 && n <= MAX_DOM0_VCPUS)) throw new UsageError(`option '--dom0-vcpus' needs a whole number from 1 to ${MAX_DOM0_VCPUS}, got ${q(dom0Vcpus)}`);
    out.dom0Vcpus = n;
  }
  const port = seen.get('nbd');
  const path = seen.get('nbd-socket');
  if (port !== undefined || path !== undefined) {
    const opt = port !== undefined ? "'--nbd'" : "'--nbd-socket'";
    if (port !== undefined && path !== undefined) throw new UsageError("options '--nbd' and '--nbd-socket' cannot be used together");
    if (out.config !== undefined) throw new UsageError(`option ${opt} serves --disk FILE and cannot be used with CONFIG`);
    if (out.disk === undefined) throw new UsageError(`option ${opt} needs --disk FILE`);
    if (out.scratchMiB !== undefined) throw new UsageError(`option '--scratch-mib' does not apply with ${opt}`);
    let listen: NbdListen;
    if (typeof port === 'string') {
      const n = /^[0-9]{1,5}$/.test(port) ? Number(port) : NaN;
      if (!(n <= 65535)) throw new UsageError(`option '--nbd' needs a TCP port from 0 to 65535, got ${q(port)}`);
      listen = { port: n };
    } else listen = { path: path as string };
    if (out.detach) throw new UsageError(`option '--detach' cannot be used with ${opt}`);
    out.nbd = { listen, readOnly: seen.has('read-only') };
  } else if (seen.has('read-only')) {
    throw new UsageError("option '--read-only' needs --nbd or --nbd-socket");
  }
  return out;
}
