/**
 * Renders rows as left-aligned columns separated by two spaces, header first,
 * with no trailing spaces. Cells are printed as given (no truncation).
 *
 * @example
 * renderTable(["Name", "State"], [["kiln-ping", "Enabled"]]);
 * // "Name       State\nkiln-ping  Enabled\n"
 */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    headers
      .map((_, i) => (i === headers.length - 1 ? (cells[i] ?? "") : (cells[i] ?? "").padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n") + "\n";
}

/**
 * Renders label/value pairs as an aligned block (the detail views).
 *
 * @example
 * renderFields([["Session", "s1"], ["State", "Open"]]); // "Session:  s1\nState:    Open\n"
 */
export function renderFields(fields: readonly (readonly [string, string])[]): string {
  const width = Math.max(0, ...fields.map(([label]) => label.length + 1));
  return fields.map(([label, value]) => `${`${label}:`.padEnd(width)}  ${value}`.trimEnd()).join("\n") + "\n";
}
