import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { whyNoNodeFits, type NodeCapacity } from "../src/control/fit.js";

const GiB = 2 ** 30;
const node = (name: string, cpu: number, memory: number, gpu = 0): NodeCapacity => ({
  name,
  total: { cpu, memory, gpu },
});

describe("whether a session's request can ever fit a connected node", () => {
  const vm = node("vm", 2, 8 * GiB);

  it("fits when one node could hold it empty, whatever runs there now", () => {
    assert.equal(whyNoNodeFits({ cpu: 2, memory: 8 * GiB, gpu: 0 }, [vm]), undefined);
    assert.equal(whyNoNodeFits({ cpu: 0, memory: 0, gpu: 1 }, [vm, node("gpu-box", 1, GiB, 1)]), undefined);
  });

  it("judges nothing without nodes: one may still join", () => {
    assert.equal(whyNoNodeFits({ cpu: 64, memory: GiB, gpu: 8 }, []), undefined);
  });

  it("names the resource no node has enough of and the most any node offers", () => {
    assert.equal(
      whyNoNodeFits({ cpu: 1, memory: GiB, gpu: 1 }, [vm]),
      "it asks for gpu=1, but the most any node has is gpu=0 (node vm)",
    );
    assert.equal(
      whyNoNodeFits({ cpu: 64, memory: 1024 * GiB, gpu: 0 }, [vm, node("big", 16, 64 * GiB)]),
      "it asks for cpu=64 and mem=1Ti, but the most any node has is cpu=16 (node big) and mem=64Gi (node big)",
    );
  });

  it("when every resource exists but never on one node, shows the closest nodes and what each lacks", () => {
    const nodes = [node("cpu-box", 32, 4 * GiB), node("gpu-box", 2, 4 * GiB, 2), node("small", 1, GiB)];
    assert.equal(
      whyNoNodeFits({ cpu: 8, memory: 2 * GiB, gpu: 1 }, nodes),
      "it asks for cpu=8,mem=2Gi,gpu=1 on one node, but no node has all of that: " +
        "node cpu-box has cpu=32,mem=4Gi,gpu=0 (too little gpu); " +
        "node gpu-box has cpu=2,mem=4Gi,gpu=2 (too little cpu); " +
        "node small has cpu=1,mem=1Gi,gpu=0 (too little cpu, mem, gpu)",
    );
  });
});
