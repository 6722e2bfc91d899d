/** What the benches share: a percentile of samples, and a pause. */

/** The p-th percentile of `xs` (nearest rank, from below). */
export const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
