import type { Resources } from "@kiln/protocol";

/** What the scheduler needs to know about a session with (possible) demand. */
export interface DemandInput {
  id: string;
  priority: number;
  creationTime: number;
  resreq: Resources;
  /** Executors the session could use now: its work clamped to [min, max] instances. */
  desired: number;
  /** Executors it holds (binding or bound). */
  allocated: number;
  /** Executors it holds that could be given up at once (idle). */
  idle: number;
}

export interface NodeInput {
  name: string;
  free: Resources & { slots: number };
  total: Resources & { slots: number };
}

export interface Plan {
  /** New executors to bind, in order. */
  binds: { sessionId: string; node: string }[];
  /** How many executors each over-served session should give back. */
  reclaim: Map<string, number>;
}

/**
 * One scheduling cycle, as a pure function of the cluster's state.
 *
 * 1. Targets: the cluster's capacity (summed over ready nodes) is handed out
 *    one executor at a time, higher priority first; within a priority, to the
 *    session with the smallest dominant resource share (DRF), then the oldest.
 *    A session gets no more than it desires.
 * 2. Binds: every session below its target gets executors on nodes where its
 *    request fits, all in this cycle (a burst reaches full capacity at once).
 * 3. Reclaim: when a session below target cannot be placed, sessions above
 *    their targets are asked to give executors back (at task boundaries).
 */
export function planCycle(sessions: readonly DemandInput[], nodes: readonly NodeInput[]): Plan {
  const total = nodes.reduce(
    (acc, n) => ({
      cpu: acc.cpu + n.total.cpu,
      memory: acc.memory + n.total.memory,
      gpu: acc.gpu + n.total.gpu,
      slots: acc.slots + n.total.slots,
    }),
    { cpu: 0, memory: 0, gpu: 0, slots: 0 },
  );
  const target = computeTargets(sessions, total);

  const free = new Map(nodes.map((n) => [n.name, { ...n.free }]));
  const binds: Plan["binds"] = [];
  const unplaced = new Map<string, number>();
  const order = [...sessions].sort(byPriorityThenAge);
  for (const s of order) {
    let want = (target.get(s.id) ?? 0) - s.allocated;
    while (want > 0) {
      const node = pickNode(free, s.resreq);
      if (!node) break;
      const f = free.get(node)!;
      f.cpu -= s.resreq.cpu;
      f.memory -= s.resreq.memory;
      f.gpu -= s.resreq.gpu;
      f.slots--;
      binds.push({ sessionId: s.id, node });
      want--;
    }
    if (want > 0) unplaced.set(s.id, want);
  }

  const reclaim = new Map<string, number>();
  let deficit = [...unplaced.values()].reduce((a, b) => a + b, 0);
  if (deficit > 0) {
    for (const s of [...order].reverse()) {
      if (deficit <= 0) break;
      const surplus = s.allocated - (target.get(s.id) ?? 0);
      if (surplus <= 0) continue;
      const n = Math.min(surplus, deficit);
      reclaim.set(s.id, n);
      deficit -= n;
    }
  }
  return { binds, reclaim };
}

function computeTargets(sessions: readonly DemandInput[], total: Resources & { slots: number }): Map<string, number> {
  const target = new Map<string, number>(sessions.map((s) => [s.id, 0]));
  const remaining = { ...total };
  const priorities = [...new Set(sessions.map((s) => s.priority))].sort((a, b) => b - a);
  for (const priority of priorities) {
    const tier = sessions.filter((s) => s.priority === priority && s.desired > 0);
    const active = new Set(tier);
    while (active.size > 0 && remaining.slots > 0) {
      let best: DemandInput | undefined;
      let bestShare = Infinity;
      for (const s of active) {
        const share = dominantShare(s.resreq, target.get(s.id)!, total);
        if (share < bestShare || (share === bestShare && best && s.creationTime < best.creationTime)) {
          best = s;
          bestShare = share;
        }
      }
      const s = best!;
      if (!fits(remaining, s.resreq)) {
        active.delete(s);
        continue;
      }
      const t = target.get(s.id)! + 1;
      target.set(s.id, t);
      remaining.cpu -= s.resreq.cpu;
      remaining.memory -= s.resreq.memory;
      remaining.gpu -= s.resreq.gpu;
      remaining.slots--;
      if (t >= s.desired) active.delete(s);
    }
  }
  return target;
}

function dominantShare(r: Resources, count: number, total: Resources): number {
  const share = (used: number, all: number) => (used === 0 ? 0 : all === 0 ? Infinity : used / all);
  return Math.max(
    share(r.cpu * count, total.cpu),
    share(r.memory * count, total.memory),
    share(r.gpu * count, total.gpu),
  );
}

function fits(free: Resources & { slots: number }, r: Resources): boolean {
  return free.slots > 0 && free.cpu >= r.cpu && free.memory >= r.memory && free.gpu >= r.gpu;
}

/** The fitting node with the most free slots (spreads a session's executors). */
function pickNode(free: Map<string, Resources & { slots: number }>, r: Resources): string | undefined {
  let best: string | undefined;
  let bestSlots = -1;
  for (const [name, f] of free) {
    if (fits(f, r) && f.slots > bestSlots) {
      best = name;
      bestSlots = f.slots;
    }
  }
  return best;
}

function byPriorityThenAge(a: DemandInput, b: DemandInput): number {
  return b.priority - a.priority || a.creationTime - b.creationTime;
}
