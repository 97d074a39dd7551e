import * as tls from "node:tls";

/**
 * Whether a TLS handshake succeeds at `url`'s host and port, whatever the
 * certificate: asked after a cleartext call failed strangely, to tell the
 * user that the server wants `https://`. Never throws; false after `timeoutMs`.
 *
 * @example
 * if (await speaksTls(new URL("http://127.0.0.1:7420"))) console.log("use https://");
 */
export function speaksTls(url: URL, timeoutMs = 2_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      // An IPv6 literal keeps its brackets in a URL's hostname, but not as a host to dial.
      host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: Number(url.port || 80),
      rejectUnauthorized: false,
      ALPNProtocols: ["h2", "http/1.1"],
      timeout: timeoutMs,
    });
    const settle = (answer: boolean) => {
      socket.destroy();
      resolve(answer);
    };
    socket.once("secureConnect", () => settle(true));
    socket.once("error", () => settle(false));
    socket.once("timeout", () => settle(false));
  });
}
