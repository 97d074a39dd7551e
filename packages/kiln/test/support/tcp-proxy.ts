import * as net from "node:net";

/**
 * Forwards TCP from a loopback port it holds until `close()` to a target port the test can switch,
 * counting the bytes that come back. Clients keep one endpoint while the server behind it restarts
 * on whatever port the kernel gives it, so no test has to rebind a port someone else may have
 * taken meanwhile; and a test can see what a read cost.
 */
export class TcpProxy {
  bytesDown = 0;
  /** Where new connections go; undefined (nothing behind the proxy yet, or any more): they are reset. */
  target: number | undefined;
  private readonly sockets = new Set<net.Socket>();
  private readonly server = net.createServer((client) => {
    client.on("error", () => {});
    if (this.target === undefined) return void client.resetAndDestroy();
    const upstream = net.connect(this.target, "127.0.0.1");
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on("error", () => {});
      // Either end going (a killed server, a client that left) takes the other with it.
      s.on("close", () => {
        this.sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    upstream.on("data", (d: Buffer) => (this.bytesDown += d.length));
    client.pipe(upstream);
    upstream.pipe(client);
  });

  /** Starts listening; resolves with the proxy's endpoint. */
  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
