import { formatMemory, type Resources } from "@kiln/protocol";

/** A node as the fit check sees it: its whole capacity, as if nothing ran on it. */
export interface NodeCapacity {
  name: string;
  total: Resources;
}

const RESOURCES = ["cpu", "memory", "gpu"] as const;
type Resource = (typeof RESOURCES)[number];
/** Names as `-r cpu=1,mem=2g,gpu=0` spells them. */
const LABEL: Record<Resource, string> = { cpu: "cpu", memory: "mem", gpu: "gpu" };

/** `cpu=4`, `mem=8Gi`, `gpu=1`. */
function show(resource: Resource, r: Resources): string {
  return `${LABEL[resource]}=${resource === "memory" ? formatMemory(r.memory) : r[resource]}`;
}

function showAll(r: Resources): string {
  return RESOURCES.map((resource) => show(resource, r)).join(",");
}

/** The resources of `request` that `node` has too little of, even empty. */
function lacking(request: Resources, node: NodeCapacity): Resource[] {
  return RESOURCES.filter((resource) => node.total[resource] < request[resource]);
}

/**
 * Why no node of `nodes` could ever hold one executor asking for `request`
 * (judged on each node's whole capacity, so it is not about what runs there
 * now), or undefined when some node could. With no nodes there is nothing to
 * judge by: undefined too, as a node may still join.
 *
 * @example
 * whyNoNodeFits({ cpu: 1, memory: 2 ** 30, gpu: 1 }, [{ name: "vm", total: { cpu: 2, memory: 2 ** 33, gpu: 0 } }])
 * // "it asks for gpu=1, but the most any node has is gpu=0 (node vm)"
 */
export function whyNoNodeFits(request: Resources, nodes: readonly NodeCapacity[]): string | undefined {
  if (nodes.length === 0 || nodes.some((n) => lacking(request, n).length === 0)) return undefined;
  const beyondEveryNode = RESOURCES.filter((resource) => nodes.every((n) => n.total[resource] < request[resource]));
  if (beyondEveryNode.length > 0) {
    const most = beyondEveryNode.map((resource) => {
      const best = nodes.reduce((a, b) => (b.total[resource] > a.total[resource] ? b : a));
      return `${show(resource, best.total)} (node ${best.name})`;
    });
    const asked = beyondEveryNode.map((resource) => show(resource, request));
    return `it asks for ${asked.join(" and ")}, but the most any node has is ${most.join(" and ")}`;
  }
  // Every resource is on some node, never all of them on one: show the nodes that come closest.
  const closest = [...nodes].sort((a, b) => lacking(request, a).length - lacking(request, b).length).slice(0, 3);
  const shortOf = closest.map(
    (n) =>
      `node ${n.name} has ${showAll(n.total)} (too little ${lacking(request, n)
        .map((r) => LABEL[r])
        .join(", ")})`,
  );
  return `it asks for ${showAll(request)} on one node, but no node has all of that: ${shortOf.join("; ")}`;
}
