/** What one batch of darts found. */
export interface Sample {
  inside: number;
  points: number;
}

/**
 * Throws `points` darts at the unit square and counts those landing inside
 * the quarter circle; the share inside tends to π/4. Seeded, so every batch
 * is different and a rerun gives the same numbers.
 */
export function sample(points: number, seed: number): Sample {
  const random = mulberry32(seed);
  let inside = 0;
  for (let i = 0; i < points; i++) {
    const x = random();
    const y = random();
    if (x * x + y * y <= 1) inside++;
  }
  return { inside, points };
}

/** A small, fast 32-bit PRNG (Tommy Ettinger's Mulberry32). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
