// What /proc says about a process (Linux): CPU time and resident memory, for the bench's columns.
// No imports beyond node:fs, so the load generator can use it too.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

/** User plus system CPU time of a process so far, in clock ticks (fields 14 and 15 of /proc/<pid>/stat). */
export function cpuTicks(pid: number | 'self'): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  // The command name (field 2) may hold spaces: count from the ')' that closes it, after which field 3 begins.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Clock ticks per second (USER_HZ), 100 on every Linux we know of. */
export function ticksPerSecond(): number {
  try {
    const hz = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return hz > 0 ? hz : 100;
  } catch {
    return 100;
  }
}

export interface Memory {
  /** Resident now, MiB. */
  readonly rss: number;
  /** Peak resident since start or since the last resetPeak, MiB. */
  readonly hwm: number;
}

/** VmRSS and VmHWM from /proc/<pid>/status, as helpers.peakRssMiB reads them. */
export function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name: string) => Number(status.match(new RegExp(`${name}:\\s+(\\d+) kB`))?.[1] ?? NaN);
  return { rss: kib('VmRSS') / 1024, hwm: kib('VmHWM') / 1024 };
}

/** Resets VmHWM to the current RSS (Linux 4.0+, clear_refs value 5). False where that is not permitted. */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** The CPU model from /proc/cpuinfo, or what os.cpus() would say. */
export function cpuModel(fallback: string): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() || fallback;
  } catch {
    return fallback;
  }
}
