/**
 * The commands a running machine answers on its control socket (toolstack/control.ts),
 * in the spirit of `xl`, and how the `pvio` command prints their answers.
 *
 * | command | arguments | answer |
 * |---|---|---|
 * | `list` | | the domains: id, name, state, memory, vCPUs, busy time |
 * | `xenstore-ls` | [PATH] (default `/`) | every node below, with its value |
 * | `xenstore-read` | PATH | the value |
 * | `xenstore-write` | PATH VALUE | |
 * | `block-attach` | NAME SPEC CWD | (SPEC as in a config's `disk = [...]`, paths relative to CWD) |
 * | `block-detach` | NAME VDEV | whether it was forced |
 * | `network-attach` | NAME [SPEC] | the new vif's devid |
 * | `network-detach` | NAME DEVID | whether it was forced |
 * | `mem-set` | NAME SIZE | (SIZE as `xl mem-set`'s: see {@link parseMemSizeKiB}); writes the guest's `memory/target` |
 * | `destroy` | NAME | |
 * | `shutdown` | [NAME] | a guest: whether it had to be destroyed; none: the whole machine stops |
 * | `stats` | | a {@link MachineSnapshot} (what `pvio top` turns into rates) |
 * | `sched-credit` | [NAME [WEIGHT [CAP]]] (`''`: not given) | with WEIGHT or CAP: sets them (nothing); else NAME's (or every domain's) {@link SchedCreditRow}s |
 * | `console` | NAME | a stream: `{type:'output', line}` from the guest's console, `{type:'exit'}` when it ends; the client sends `{type:'input', data}` |
 * | `ping` | | `pong` |
 * | `pid` | | the process id of the `pvio up` serving it |
 */
import { parseDiskSpec, parseVifSpec } from './config.ts';
import type { ConsoleEvent, DomainEvent, Machine, MachineSnapshot } from './machine.ts';
import { ControlStream, type ControlHandler } from './control.ts';
import type { DomainSummary } from '../hypervisor/hypervisor.ts';

/** The commands `pvio` sends to a machine (see the module comment). */
export const CONTROL_COMMANDS = ['list', 'xenstore-ls', 'xenstore-read', 'xenstore-write', 'block-attach', 'block-detach',
  'network-attach', 'network-detach', 'destroy', 'shutdown', 'top', 'console', 'mem-set', 'sched-credit'] as const;
/** One of {@link CONTROL_COMMANDS}. */
export type ControlCommandName = (typeof CONTROL_COMMANDS)[number];

/** How many arguments each command takes: [least, most]. */
export const CONTROL_ARITY: Readonly<Record<ControlCommandName, readonly [number, number]>> = {
  list: [0, 0], 'xenstore-ls': [0, 1], 'xenstore-read': [1, 1], 'xenstore-write': [2, 2], 'block-attach': [2, 2], 'block-detach': [2, 2],
  'network-attach': [1, 2], 'network-detach': [2, 2], destroy: [1, 1], shutdown: [0, 1], top: [0, 0], console: [1, 1],
  'mem-set': [2, 2], 'sched-credit': [0, 1],
};

/** One domain's line of `pvio sched-credit` (xl's columns). */
export interface SchedCreditRow {
  readonly name: string;
  readonly domid: number;
  readonly weight: number;
  /** Percent of one CPU; 0 = no cap. */
  readonly cap: number;
}

/**
 * A memory size as `xl mem-set` reads it: a whole number with an optional unit,
 * `b`, `k`, `m` (the default), `g` or `t` (either case; powers of 1024), e.g. `512`,
 * `512m`, `2G`, `65536k`.
 * @returns the size in KiB (bytes rounded down to whole KiB).
 * @throws Error with a one-line message for anything else (or a size past 2^53 KiB).
 * @see tools/xl/xl_utils.c (parse_mem_size_kb)
 */
export function parseMemSizeKiB(text: string): number {
  const m = /^([0-9]{1,16})([bkmgtBKMGT]?)$/.exec(text);
  const shift: Record<string, number> = { b: -10, k: 0, '': 10, m: 10, g: 20, t: 30 };
  const kib = m ? Math.floor(Number(m[1]) * 2 ** shift[m[2].toLowerCase()]) : NaN;
  if (!Number.isSafeInteger(kib)) {
    throw new Error(`bad memory size '${text.slice(0, 20)}' (a whole number with an optional unit b, k, m, g or t; m when none)`);
  }
  return kib;
}

/**
 * The handlers of a machine's control socket. `stopMachine` is called for a
 * `shutdown` without a name (the caller shuts the machine down and exits).
 */
export function machineHandlers(m: Machine, stopMachine: () => void): Record<string, ControlHandler> {
  const domid = async (name: string): Promise<number> => {
    const d = (await m.domains()).find((x) => x.name === name);
    if (!d) throw new Error(`no domain named '${name}'`);
    if (d.domid === 0) throw new Error('Domain-0 cannot be the target of this command');
    return d.domid;
  };
  return {
    ping: () => 'pong',
    stats: () => m.stats(),
    console: async (a) => {
      const id = await domid(a[0]);
      return new ControlStream((conn) => {
        const out = (e: ConsoleEvent) => {
          if (e.domain === a[0]) conn.send({ type: 'output', line: e.line });
        };
        const gone = (e: DomainEvent) => {
          if (e.domid === id && e.state === 'exited') conn.send({ type: 'exit' });
        };
        m.on('console', out).on('domain', gone);
        conn.onMessage((msg) => {
          const x = msg as { type?: string; data?: unknown };
          if (x.type === 'input' && typeof x.data === 'string') void m.consoleInput(id, x.data).catch((e: Error) => conn.send({ type: 'error', error: e.message }));
        });
        conn.onClose(() => {
          m.off('console', out).off('domain', gone);
        });
      });
    },
    pid: () => process.pid,
    list: () => m.domains(),
    'xenstore-ls': (a) => m.xenstoreList(a[0] ?? '/'),
    'xenstore-read': (a) => m.xenstoreRead(a[0]),
    'xenstore-write': (a) => m.xenstoreWrite(a[0], a[1]),
    'block-attach': async (a) => {
      const spec = parseDiskSpec(a[1], a[2] ?? process.cwd());
      await m.attachDisk(await domid(a[0]), spec);
      return spec.vdev;
    },
    'block-detach': async (a) => m.detachDisk(await domid(a[0]), a[1]),
    'network-attach': async (a) => m.attachVif(await domid(a[0]), a[1] ? parseVifSpec(a[1]) : {}),
    'network-detach': async (a) => {
      if (!/^[0-9]{1,3}$/.test(a[1])) throw new Error(`bad devid '${a[1].slice(0, 20)}' (a number, as in eth<devid>)`);
      return m.detachVif(await domid(a[0]), Number(a[1]));
    },
    destroy: async (a) => m.destroy(await domid(a[0])),
    'sched-credit': async (a) => {
      const num = (s: string | undefined, what: string): number | undefined => {
        if (s === undefined || s === '') return undefined;
        if (!/^[0-9]{1,9}$/.test(s)) throw new Error(`bad ${what} '${s.slice(0, 20)}' (a whole number)`);
        return Number(s);
      };
      const weight = num(a[1], 'weight');
      const cap = num(a[2], 'cap');
      const live = (await m.domains()).filter((d) => d.state !== 'dying' && d.state !== 'dead');
      const name = a[0] ?? '';
      const doms = name === '' ? live : live.filter((d) => d.name === name);
      if (doms.length === 0) throw new Error(`no domain named '${name}'`);
      if (weight !== undefined || cap !== undefined) {
        if (name === '') throw new Error('sched-credit: setting a weight or cap needs the domain\'s NAME');
        await m.setSchedParams(doms[0].domid, { weight, cap });
        return null;
      }
      return Promise.all(doms.map(async (d): Promise<SchedCreditRow> => ({ name: d.name, domid: d.domid, ...(await m.getSchedParams(d.domid)) })));
    },
    'mem-set': async (a) => {
      const kib = parseMemSizeKiB(a[1]);
      return m.setMemoryTarget(await domid(a[0]), kib);
    },
    shutdown: async (a) => {
      if (a[0] === undefined) {
        setImmediate(stopMachine); // answer first, then stop
        return null;
      }
      return m.shutdownDomain(await domid(a[0]));
    },
  };
}

/** The `xl list` table of {@link DomainSummary} rows. */
export function formatList(rows: readonly DomainSummary[]): string {
  const head = ['Name', 'ID', 'Mem', 'VCPUs', 'State', 'Time(s)'];
  const cells = rows.map((d) => [d.name, String(d.domid), String(Math.round((d.maxPages * 4096) / 2 ** 20)), String(d.vcpus), d.state, (d.busyMs / 1000).toFixed(1)]);
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: readonly string[]) => c.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join('  ');
  return [line(head), ...cells.map(line)].join('\n') + '\n';
}

/** The `xl sched-credit` table of {@link SchedCreditRow}s: Name, ID, Weight, Cap. */
export function formatSchedCredit(rows: readonly SchedCreditRow[]): string {
  const head = ['Name', 'ID', 'Weight', 'Cap'];
  const cells = rows.map((r) => [r.name, String(r.domid), String(r.weight), String(r.cap)]);
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: readonly string[]) => c.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join('  ');
  return [line(head), ...cells.map(line)].join('\n') + '\n';
}

/** `xenstore-ls` output: the tree, each node indented by its depth below `root`, as `name = "value"`. */
export function formatXenstoreTree(root: string, nodes: ReadonlyArray<readonly [string, string]>): string {
  const base = root === '/' ? 0 : root.split('/').length - 1;
  return nodes.map(([p, v]) => {
    const parts = p === '/' ? [''] : p.split('/');
    const depth = p === root ? 0 : parts.length - 1 - base;
    return `${' '.repeat(depth)}${p === '/' ? '/' : parts[parts.length - 1]} = "${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  }).join('\n') + '\n';
}

/** What `pvio COMMAND` prints for a command's answer (empty: nothing). */
export function formatControlReply(op: ControlCommandName, value: unknown, args: readonly string[]): string {
  switch (op) {
    case 'list': return formatList(value as DomainSummary[]);
    case 'xenstore-ls': return formatXenstoreTree(args[0] ?? '/', value as Array<[string, string]>);
    case 'xenstore-read': return `${value as string}\n`;
    case 'network-attach': return `eth${value as number}\n`;
    case 'sched-credit': return value ? formatSchedCredit(value as SchedCreditRow[]) : '';
    case 'block-detach':
    case 'network-detach':
    case 'shutdown': return value && (value as { forced?: boolean }).forced ? 'pvio: the guest did not answer in time: forced\n' : '';
    default: return '';
  }
}

/** Per-disk counters dom0 reports (the ones `top` uses). */
interface DiskCounters { reads: number; writes: number; bytesRead: number; bytesWritten: number }
/** Per-vif counters dom0 reports (the ones `top` uses). */
interface VifCounters { txPackets: number; rxPackets: number; txBytes: number; rxBytes: number; rxDropped: number }

/**
 * One `pvio top` screen: per domain its share of a core (busy time of its vCPU event
 * loops over the interval), the memory it has allocated, its hypercalls/s and the
 * wake-ups/s asked of its vCPUs; per disk reads/s, writes/s and MB/s; per vif
 * packets/s and MB/s each way and drops/s. Rates are the differences between two
 * snapshots over the time between them (`a` earlier).
 */
export function formatTop(a: MachineSnapshot, b: MachineSnapshot): string {
  const dt = Math.max(1e-3, (b.at - a.at) / 1000);
  const rate = (x: number, y: number) => Math.max(0, y - x) / dt;
  const f1 = (x: number) => x.toFixed(1);
  const table = (head: string[], rows: string[][]) => {
    const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    const line = (c: readonly string[]) => c.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join('  ');
    return [line(head), ...rows.map(line)].join('\n');
  };
  const doms0 = new Map(((a.hypervisor.domains ?? []) as DomainSummary[]).map((d) => [d.domid, d]));
  const doms = (b.hypervisor.domains ?? []) as DomainSummary[];
  const out = [`pvio top — ${new Date(b.at).toISOString()}, over ${dt.toFixed(2)} s`, '',
    table(['Domain', 'ID', 'State', 'CPU%', 'Mem KiB', 'VCPUs', 'hcalls/s', 'wakes/s'], doms.map((d) => {
      const p = doms0.get(d.domid);
      return [d.name, String(d.domid), d.state, f1((100 * rate(p?.busyMs ?? 0, d.busyMs) / 1000)), String(d.ramPages * 4), String(d.vcpus),
        f1(rate(p?.hypercalls ?? 0, d.hypercalls)), f1(rate(p?.wakes ?? 0, d.wakes))];
    }))];
  const disks0 = (a.dom0.disks ?? {}) as Record<string, DiskCounters>;
  const disks = Object.entries((b.dom0.disks ?? {}) as Record<string, DiskCounters>);
  if (disks.length > 0) {
    out.push('', table(['Disk', 'reads/s', 'writes/s', 'read MB/s', 'write MB/s'], disks.map(([k, d]) => {
      const p = disks0[k] ?? { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0 }; // new in this interval: all of it happened in it
      return [k, f1(rate(p.reads, d.reads)), f1(rate(p.writes, d.writes)), f1(rate(p.bytesRead, d.bytesRead) / 1e6), f1(rate(p.bytesWritten, d.bytesWritten) / 1e6)];
    })));
  }
  const vifs0 = (a.dom0.vifs ?? {}) as Record<string, VifCounters>;
  const vifs = Object.entries((b.dom0.vifs ?? {}) as Record<string, VifCounters>);
  if (vifs.length > 0) {
    out.push('', table(['Vif', 'tx pkt/s', 'rx pkt/s', 'tx MB/s', 'rx MB/s', 'drops/s'], vifs.map(([k, v]) => {
      const p = vifs0[k] ?? { txPackets: 0, rxPackets: 0, txBytes: 0, rxBytes: 0, rxDropped: 0 };
      return [k, f1(rate(p.txPackets, v.txPackets)), f1(rate(p.rxPackets, v.rxPackets)), f1(rate(p.txBytes, v.txBytes) / 1e6), f1(rate(p.rxBytes, v.rxBytes) / 1e6), f1(rate(p.rxDropped, v.rxDropped))];
    })));
  }
  return out.join('\n') + '\n';
}
