import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Document, isMap, isSeq, parseDocument } from "yaml";

/** The config context `kiln up` keeps true: where its cluster is and which CA to trust. */
export const UP_CONTEXT = "kiln-up";

export interface UpContext {
  endpoint: string;
  cacheEndpoint: string;
  /** The local CA (with --tls); without it the context is only updated if it exists. */
  caFile?: string;
}

/**
 * Writes the `kiln-up` context into the config file (`--config`, else
 * KILN_CONFIG, else ~/.kiln/config.yaml), keeping everything else in it,
 * and makes it the current context unless another one is. With TLS that is
 * what lets `kiln ping` connect without flags; a cleartext `kiln up` only
 * updates a `kiln-up` context that exists, so it never points at a TLS port
 * that is gone. Returns a line for the start banner; a config it cannot
 * write is reported there, not fatal: the cluster runs either way.
 *
 * @example
 * process.stdout.write(writeUpContext(undefined, { endpoint, cacheEndpoint, caFile }));
 */
export function writeUpContext(configFlag: string | undefined, up: UpContext): string {
  const configPath = configFlag || process.env.KILN_CONFIG || path.join(os.homedir(), ".kiln", "config.yaml");
  try {
    const text = fs.existsSync(configPath) ? fs.readFileSync(configPath, "utf8") : "";
    const parsed = parseDocument(text);
    if (parsed.errors.length > 0) throw new Error(parsed.errors[0]!.message);
    if (parsed.contents !== null && !isMap(parsed.contents)) throw new Error("its root is not a mapping");
    // An empty file has no mapping to add to yet.
    const doc: Document = isMap(parsed.contents) ? parsed : new Document({});
    const existing = findContext(doc);
    if (!up.caFile && !existing) return "";
    const entry = {
      name: UP_CONTEXT,
      cluster: { endpoint: up.endpoint, ...(up.caFile ? { "tls-ca": up.caFile } : {}) },
      cache: { endpoint: up.cacheEndpoint },
    };
    if (existing) existing.replace(doc.createNode(entry));
    else addContext(doc, entry);
    const current = doc.get("current-context");
    const isCurrent = current === undefined || current === null || current === "" || current === UP_CONTEXT;
    if (isCurrent) doc.set("current-context", UP_CONTEXT);
    fs.mkdirSync(path.dirname(configPath), { recursive: true });
    const temp = `${configPath}.${process.pid}.tmp`;
    fs.writeFileSync(temp, doc.toString(), { mode: 0o600 });
    fs.renameSync(temp, configPath);
    return isCurrent
      ? `  config: context ${UP_CONTEXT} in ${configPath} is current: clients need no --endpoint or --tls-ca\n`
      : `  config: context ${UP_CONTEXT} written to ${configPath}; use it with --context ${UP_CONTEXT} (current: ${String(current)})\n`;
  } catch (err) {
    return `  config: could not write context ${UP_CONTEXT} to ${configPath} (${(err as Error).message})\n`;
  }
}

/** The `kiln-up` entry of `contexts`, with a way to replace it in place. */
function findContext(doc: Document): { replace(node: unknown): void } | undefined {
  const contexts = doc.get("contexts");
  if (!isSeq(contexts)) return undefined;
  const index = contexts.items.findIndex((item) => isMap(item) && item.get("name") === UP_CONTEXT);
  if (index < 0) return undefined;
  return { replace: (node) => contexts.set(index, node) };
}

function addContext(doc: Document, entry: object): void {
  const contexts = doc.get("contexts");
  if (isSeq(contexts)) contexts.add(doc.createNode(entry));
  else doc.set("contexts", doc.createNode([entry]));
}
