/** Does nothing: what is measured is the round trip around it. */
export function noop(): null {
  return null;
}
