import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import forge from "node-forge";

/**
 * A local certificate authority for `--tls` without certificate files: a CA
 * and a server certificate it signs, kept in `<data-dir>/tls` and reused on
 * restart, so clients trust one `ca.pem` for good. Certificates are built
 * with node-forge (no dependencies, no native code); keys come from Node's
 * crypto, which is much faster than generating RSA keys in JavaScript.
 */

/** A certificate and its key, as PEM text. */
export interface KeyPair {
  cert: string;
  key: string;
}

/** What {@link ensureLocalTls} leaves in the directory. */
export interface LocalTlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
  /** SHA-256 fingerprint of the CA certificate, as `openssl x509 -fingerprint -sha256` prints it. */
  caFingerprint: string;
}

const CA_YEARS = 10;
/** Browsers' limit for server certificates; a local one is reissued when it nears its end. */
const SERVER_DAYS = 825;
const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;

/**
 * A new self-signed CA.
 *
 * @example
 * const ca = createCertificateAuthority("Kiln test CA");
 */
export function createCertificateAuthority(commonName: string): KeyPair {
  const { forgeKey, publicKey, key } = newKey();
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = backdated();
  cert.validity.notAfter = new Date(Date.now() + CA_YEARS * 365 * 24 * 3600 * 1000);
  const subject = [{ name: "commonName", value: commonName }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    { name: "subjectKeyIdentifier" },
  ]);
  cert.sign(forgeKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key };
}

/**
 * A certificate signed by `ca`: for a server (names and addresses in
 * `hosts` become its subject alternative names) or, with `client`, for a
 * client of mutual TLS (an agent, a CLI).
 *
 * @example
 * const server = issueCertificate(ca, { commonName: "kiln", hosts: ["localhost", "127.0.0.1"] });
 * const agent = issueCertificate(ca, { commonName: "node-1", client: true });
 */
export function issueCertificate(
  ca: KeyPair,
  options: { commonName: string; hosts?: string[]; client?: boolean; days?: number },
): KeyPair {
  const caCert = forge.pki.certificateFromPem(ca.cert);
  const { publicKey, key } = newKey();
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = backdated();
  cert.validity.notAfter = new Date(Date.now() + (options.days ?? SERVER_DAYS) * 24 * 3600 * 1000);
  cert.setSubject([{ name: "commonName", value: options.commonName }]);
  cert.setIssuer(caCert.subject.attributes);
  const altNames = (options.hosts ?? []).map((h) => (net.isIP(h) ? { type: 7, ip: h } : { type: 2, value: h }));
  cert.setExtensions([
    { name: "basicConstraints", cA: false },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", serverAuth: !options.client, clientAuth: Boolean(options.client) },
    ...(altNames.length > 0 ? [{ name: "subjectAltName", altNames }] : []),
    { name: "authorityKeyIdentifier", keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(ca.key), forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key };
}

/**
 * The names a server listening on `host` is reached by: localhost and the
 * loopback addresses, this machine's hostname, and `host` itself (or, for a
 * wildcard address, every address of this machine).
 */
export function serverNames(host: string): string[] {
  const names = new Set(["localhost", "127.0.0.1", "::1", os.hostname()]);
  if (host === "0.0.0.0" || host === "::") {
    for (const addresses of Object.values(os.networkInterfaces()))
      for (const a of addresses ?? []) if (!a.address.startsWith("fe80:")) names.add(a.address);
  } else {
    names.add(host);
  }
  return [...names];
}

/**
 * The local CA and a server certificate for `hosts` in `dir`: made on first
 * use, reused after. The CA is kept as long as its files are; the server
 * certificate is reissued (by the same CA) when it does not cover every
 * name in `hosts` or nears its end, so clients that trust `ca.pem` keep
 * working. Key files are mode 0600.
 *
 * @example
 * const files = ensureLocalTls(path.join(dataDir, "tls"), serverNames("127.0.0.1"));
 */
export function ensureLocalTls(dir: string, hosts: string[]): LocalTlsFiles {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caFile = path.join(dir, "ca.pem");
  const caKeyFile = path.join(dir, "ca-key.pem");
  const certFile = path.join(dir, "server.pem");
  const keyFile = path.join(dir, "server-key.pem");
  let ca = readPair(caFile, caKeyFile);
  if (!ca) {
    ca = createCertificateAuthority(`Kiln local CA (${os.hostname()})`);
    writeKey(caKeyFile, ca.key);
    writeAtomically(caFile, ca.cert, 0o644);
  }
  const server = readPair(certFile, keyFile);
  if (!server || !covers(server.cert, ca.cert, hosts)) {
    const issued = issueCertificate(ca, { commonName: "kiln", hosts });
    writeKey(keyFile, issued.key);
    writeAtomically(certFile, issued.cert, 0o644);
  }
  return { caFile, certFile, keyFile, caFingerprint: new crypto.X509Certificate(ca.cert).fingerprint256 };
}

/** Whether `certPem` was signed by `caPem`, is valid for a while yet, and names every host. */
function covers(certPem: string, caPem: string, hosts: string[]): boolean {
  const cert = new crypto.X509Certificate(certPem);
  if (!cert.verify(new crypto.X509Certificate(caPem).publicKey)) return false;
  if (new Date(cert.validTo).getTime() - Date.now() < RENEW_BEFORE_MS) return false;
  return hosts.every((h) => (net.isIP(h) ? cert.checkIP(h) : cert.checkHost(h)) !== undefined);
}

function readPair(certFile: string, keyFile: string): KeyPair | undefined {
  try {
    return { cert: fs.readFileSync(certFile, "utf8"), key: fs.readFileSync(keyFile, "utf8") };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
}

function writeKey(file: string, pem: string): void {
  writeAtomically(file, pem, 0o600);
}

/** Written under a temporary name and renamed, so a crash never leaves half a file to be "reused". */
function writeAtomically(file: string, text: string, mode: number): void {
  const temp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temp, text, { mode });
  fs.chmodSync(temp, mode);
  fs.renameSync(temp, file);
}

function newKey(): { forgeKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey; key: string } {
  const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
  const key = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(key) as forge.pki.rsa.PrivateKey;
  return { forgeKey, publicKey: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e), key };
}

/** 16 random bytes, first bit clear: serial numbers must be positive. */
function randomSerial(): string {
  const bytes = crypto.randomBytes(16);
  bytes[0]! &= 0x7f;
  return bytes.toString("hex");
}

/** An hour in the past, so a client whose clock is slightly behind still accepts a fresh certificate. */
function backdated(): Date {
  return new Date(Date.now() - 3600 * 1000);
}
