/**
 * Whether a process with this pid exists (EPERM: it exists, owned by someone else).
 *
 * @example
 * if (!processExists(Number(process.env.KILN_AGENT_PID))) process.exit(0);
 */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
