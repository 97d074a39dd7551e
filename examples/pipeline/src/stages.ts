/** Generates `n` pseudo-random readings: a large value (8 bytes each) that travels through the object cache. */
export function generate(n: number, seed: number): Float64Array {
  const out = new Float64Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x / 4294967296) * 100;
  }
  return out;
}

/** Scales readings to [0, 1]. */
export function normalize(readings: Float64Array): Float64Array {
  let min = Infinity;
  let max = -Infinity;
  for (const r of readings) {
    if (r < min) min = r;
    if (r > max) max = r;
  }
  const span = max - min || 1;
  return readings.map((r) => (r - min) / span);
}

export interface Summary {
  count: number;
  mean: number;
  histogram: number[];
}

/** A small summary of many values: only this comes back to the client. */
export function summarize(values: Float64Array, buckets = 10): Summary {
  const histogram = new Array<number>(buckets).fill(0);
  let sum = 0;
  for (const v of values) {
    sum += v;
    histogram[Math.min(buckets - 1, Math.floor(v * buckets))]!++;
  }
  return { count: values.length, mean: sum / values.length, histogram };
}
