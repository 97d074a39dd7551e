/**
 * Sends `signal` to every process of the group `pgid` (a child spawned with
 * `detached: true` leads its own group), so grandchildren go too. A group
 * that is already gone is not an error.
 *
 * @example
 * const child = spawn("sh", ["-c", "sleep 100 & wait"], { detached: true });
 * signalProcessGroup(child.pid!, "SIGTERM");
 */
export function signalProcessGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // The group is already gone.
  }
}
