// The cluster tier's DNS (no CoreDNS image can be fetched here): a small UDP server on the bridge address that
// answers A queries for Services — <service>.<namespace>.svc.cluster.local → its ClusterIP, or the ready endpoint
// addresses of a headless Service — by asking the apiserver. Other names in cluster.local get NXDOMAIN; names
// outside it get NXDOMAIN too (the cluster has no way out). Plain JavaScript so any Node on the host runs it.
//
//   node dns.mjs LISTEN_IP PORT APISERVER_URL CA_FILE TOKEN_FILE
import { readFileSync } from 'node:fs';
import dgram from 'node:dgram';
import https from 'node:https';

const [listenIp, portText, apiserver, caFile, tokenFile] = process.argv.slice(2);
if (!listenIp || !portText || !apiserver || !caFile || !tokenFile) {
  process.stderr.write('usage: node dns.mjs LISTEN_IP PORT APISERVER_URL CA_FILE TOKEN_FILE\n');
  process.exit(2);
}
const ca = readFileSync(caFile);
const token = readFileSync(tokenFile, 'utf8').trim();
const DOMAIN = 'svc.cluster.local';
const TTL_S = 5;
const CACHE_MS = 2000;
const cache = new Map();

function getJson(path) {
  return new Promise((resolve, reject) => {
    const req = https.get(`${apiserver}${path}`, { ca, headers: { authorization: `Bearer ${token}` }, timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode, body: res.statusCode === 200 ? JSON.parse(body) : undefined }));
    });
    req.on('timeout', () => req.destroy(new Error('apiserver timeout')));
    req.on('error', reject);
  });
}

/** IPv4 addresses of service NAME in NS, [] when it has none, undefined when it does not exist. */
async function serviceAddresses(ns, name) {
  const key = `${ns}/${name}`;
  const hit = cache.get(key);
  if (hit && Date.now() - hit.at < CACHE_MS) return hit.value;
  const svc = await getJson(`/api/v1/namespaces/${encodeURIComponent(ns)}/services/${encodeURIComponent(name)}`);
  let value;
  if (svc.status === 200) {
    const ip = svc.body.spec?.clusterIP;
    if (ip && ip !== 'None') value = [ip];
    else {
      const ep = await getJson(`/api/v1/namespaces/${encodeURIComponent(ns)}/endpoints/${encodeURIComponent(name)}`);
      value = (ep.body?.subsets ?? []).flatMap((s) => (s.addresses ?? []).map((a) => a.ip));
    }
  } else if (svc.status !== 404) {
    throw new Error(`apiserver answered ${svc.status}`);
  }
  cache.set(key, { at: Date.now(), value });
  return value;
}

/** Parse the single question of a query: { name, type, end } (end = offset after the question). */
function parseQuestion(msg) {
  let off = 12;
  const labels = [];
  for (;;) {
    const len = msg[off];
    if (len === undefined || len > 63) throw new Error('bad name');
    off += 1;
    if (len === 0) break;
    labels.push(msg.subarray(off, off + len).toString('latin1').toLowerCase());
    off += len;
  }
  if (off + 4 > msg.length) throw new Error('short question');
  return { name: labels.join('.'), type: msg.readUInt16BE(off), end: off + 4 };
}

function reply(query, questionEnd, rcode, ips) {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(query.readUInt16BE(0), 0);
  // QR, opcode 0, AA, RD copied from the query, RA, rcode.
  header.writeUInt16BE(0x8000 | 0x0400 | (query.readUInt16BE(2) & 0x0100) | 0x0080 | rcode, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(ips.length, 6);
  const answers = ips.map((ip) => {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc00c, 0); // pointer to the question's name
    rr.writeUInt16BE(1, 2); // A
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(TTL_S, 6);
    rr.writeUInt16BE(4, 10);
    ip.split('.').forEach((octet, i) => {
      rr[12 + i] = Number(octet);
    });
    return rr;
  });
  return Buffer.concat([header, query.subarray(12, questionEnd), ...answers]);
}

const server = dgram.createSocket('udp4');
server.on('message', async (msg, rinfo) => {
  let q;
  try {
    if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return;
    q = parseQuestion(msg);
  } catch {
    return; // not a query we can answer: a resolver retries or gives up
  }
  let rcode = 3; // NXDOMAIN
  let ips = [];
  try {
    if (q.name.endsWith(`.${DOMAIN}`)) {
      const parts = q.name.slice(0, -DOMAIN.length - 1).split('.');
      if (parts.length === 2) {
        const addresses = await serviceAddresses(parts[1], parts[0]);
        if (addresses !== undefined) {
          rcode = 0;
          // Only A records exist here; AAAA and others get an empty NOERROR answer.
          ips = q.type === 1 ? addresses : [];
        }
      }
    }
  } catch (err) {
    process.stderr.write(`lookup ${q.name}: ${err.message}\n`);
    rcode = 2; // SERVFAIL
  }
  server.send(reply(msg, q.end, rcode, ips), rinfo.port, rinfo.address);
});
server.on('error', (err) => {
  process.stderr.write(`dns: ${err.message}\n`);
  process.exit(1);
});
server.bind(Number(portText), listenIp, () => process.stderr.write(`dns: listening on ${listenIp}:${portText}\n`));
