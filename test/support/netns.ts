import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomInt } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

/**
 * A test network of Linux network namespaces: one namespace per host, each with an `eth0` on its
 * own address, all joined by a bridge that lives in a namespace of its own (so nothing of the test
 * touches the machine's own network). Taking a host's link down drops its packets without resetting
 * its connections, as a pulled cable or a lost switch port does.
 *
 * Processes run in a host's namespace, and in a mount namespace of their own where chosen paths are
 * hidden under an empty tmpfs and others bound in place, so a process sees only its own host's files.
 *
 * @example
 * const net = TestNetwork.create(["server", "agent"]);
 * if (typeof net === "string") return t.skip(net);
 * const child = net.spawn("agent", "node", ["agent.js"], { hide: ["/srv/kiln"] });
 * net.linkDown("agent"); net.linkUp("agent");
 * net.destroy();
 */
export class TestNetwork {
  private readonly hostIndex = new Map<string, number>();
  private readonly children = new Set<ChildProcess>();

  private constructor(
    private readonly prefix: string,
    private readonly subnet: string,
    hosts: readonly string[],
  ) {
    hosts.forEach((host, i) => this.hostIndex.set(host, i));
  }

  /**
   * Makes the namespaces, or says why they cannot be made here (not root, no `ip`, no namespaces):
   * the caller skips with that message.
   */
  static create(hosts: readonly string[]): TestNetwork | string {
    if (process.platform !== "linux") return "network namespaces need Linux";
    if (process.getuid?.() !== 0) return "network namespaces need root (run the suite as root, as CI does)";
    for (const tool of ["ip", "unshare", "mount"])
      if (spawnSync(tool, ["-V"], { stdio: "ignore" }).error)
        return `\`${tool}\` is not installed (iproute2/util-linux)`;
    const prefix = `kmh${process.pid}x${randomInt(1000)}`;
    const network = new TestNetwork(prefix, `10.${randomInt(100, 250)}.${randomInt(0, 250)}`, hosts);
    try {
      network.build(hosts);
    } catch (err) {
      network.destroy();
      return `network namespaces cannot be made here: ${(err as Error).message}`;
    }
    // However the test process ends, nothing of the network outlives it (destroy is idempotent).
    process.once("exit", () => network.destroy());
    return network;
  }

  /** The host's address on the test network. */
  address(host: string): string {
    return `${this.subnet}.${this.index(host) + 10}`;
  }

  /** Drops every packet to and from `host` (its connections stay open, unanswered) until linkUp. */
  linkDown(host: string): void {
    ip("-n", this.bridgeNs, "link", "set", this.bridgePort(host), "down");
  }

  linkUp(host: string): void {
    ip("-n", this.bridgeNs, "link", "set", this.bridgePort(host), "up");
  }

  /**
   * Starts `command` on `host`: in its network namespace, with `binds` mounted first (from → onto)
   * and then `hide` covered by empty directories. The child's pid is the command's own (every wrapper
   * execs), so signals reach it directly; destroy() kills what is still running. `stdin`, when
   * given, is written to the child's stdin, which is then closed.
   */
  spawn(
    host: string,
    command: string,
    args: readonly string[],
    o: {
      env?: NodeJS.ProcessEnv;
      cwd?: string;
      hide?: readonly string[];
      binds?: readonly { from: string; onto: string }[];
      /** Written to the child's stdin, which is then closed (a secret for `--token-file -`). */
      stdin?: string;
    } = {},
  ): ChildProcess {
    const mounts = [
      ...(o.binds ?? []).map((b) => `mount --bind ${quote(b.from)} ${quote(b.onto)}`),
      ...(o.hide ?? []).map((p) => `mount -t tmpfs -o size=1m,mode=0755 kiln-hidden ${quote(p)}`),
    ];
    const script = [...mounts, `cd ${quote(o.cwd ?? "/")}`, 'exec "$@"'].join(" && ");
    const child = spawn(
      "ip",
      [
        "netns",
        "exec",
        this.hostNs(host),
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        command,
        ...args,
      ],
      { env: o.env ?? process.env, stdio: [o.stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"] },
    );
    child.stdin?.end(o.stdin);
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  /** Kills what still runs and removes every namespace (idempotent). */
  destroy(): void {
    for (const child of this.children) child.kill("SIGKILL");
    for (const host of this.hostIndex.keys()) {
      // Processes still in the namespace (children of killed ones) die with it only if killed.
      const pids = spawnSync("ip", ["netns", "pids", this.hostNs(host)], { encoding: "utf8" }).stdout ?? "";
      for (const pid of pids.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
      spawnSync("ip", ["netns", "del", this.hostNs(host)], { stdio: "ignore" });
    }
    spawnSync("ip", ["netns", "del", this.bridgeNs], { stdio: "ignore" });
  }

  private build(hosts: readonly string[]): void {
    ip("netns", "add", this.bridgeNs);
    ip("-n", this.bridgeNs, "link", "add", "br0", "type", "bridge");
    ip("-n", this.bridgeNs, "link", "set", "br0", "up");
    for (const host of hosts) {
      const ns = this.hostNs(host);
      ip("netns", "add", ns);
      ip("-n", ns, "link", "set", "lo", "up");
      ip(
        "-n",
        this.bridgeNs,
        "link",
        "add",
        this.bridgePort(host),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
      );
      ip("-n", this.bridgeNs, "link", "set", this.bridgePort(host), "master", "br0", "up");
      ip("-n", ns, "addr", "add", `${this.address(host)}/24`, "dev", "eth0");
      ip("-n", ns, "link", "set", "eth0", "up");
    }
  }

  private get bridgeNs(): string {
    return `${this.prefix}-br`;
  }

  private hostNs(host: string): string {
    return `${this.prefix}-${this.index(host)}`;
  }

  private bridgePort(host: string): string {
    return `p${this.index(host)}`;
  }

  private index(host: string): number {
    const i = this.hostIndex.get(host);
    if (i === undefined) throw new Error(`no host ${host} in this test network`);
    return i;
  }
}

function ip(...args: string[]): void {
  const r = spawnSync("ip", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`ip ${args.join(" ")}: ${(r.stderr || r.error?.message || "").trim()}`);
}

function quote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A copy of this checkout's runnable Kiln (manifests, built dist, bin, node_modules and the test
 * fixtures) at `dest`, as a separate machine would have its own install. node_modules is hard-linked
 * when it can be (same filesystem), which keeps the copy fast; what matters is that its paths differ.
 */
export function copyInstall(checkout: string, dest: string): void {
  fs.mkdirSync(dest, { recursive: true });
  const copy = (rel: string, link = false): void => {
    const from = path.join(checkout, rel);
    if (!fs.existsSync(from)) return;
    fs.mkdirSync(path.dirname(path.join(dest, rel)), { recursive: true });
    const r = spawnSync("cp", [link ? "-al" : "-a", from, path.join(dest, rel)]);
    if (r.status !== 0 && link) copy(rel);
    else if (r.status !== 0) throw new Error(`cp ${from}: ${r.stderr.toString()}`);
  };
  copy("package.json");
  copy("node_modules", true);
  for (const pkg of fs.readdirSync(path.join(checkout, "packages"))) {
    for (const part of ["package.json", "dist", "bin"]) copy(path.join("packages", pkg, part));
    copy(path.join("packages", pkg, "node_modules"), true);
  }
  copy("test/fixtures");
}
