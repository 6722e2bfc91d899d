/**
 * Chain names as kube-proxy derives them: a prefix and the first 16
 * characters of base32(sha256(identity)). Stable across runs and hosts, short
 * enough for iptables' 28-character chain names, and each rule carries a
 * comment with the human name.
 */
import { hash } from 'node:crypto';

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 (standard alphabet, as Go's base32.StdEncoding), without padding. */
export function base32(buf: Uint8Array): string {
  let bits = 0,
    value = 0,
    out = '';
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  return out;
}

/** kube-proxy's portProtoHash: base32(sha256(servicePortName + protocol))[:16]. */
export function portProtoHash(servicePortName: string, protocol: string): string {
  return base32(hash('sha256', servicePortName + protocol, 'buffer')).slice(0, 16);
}

/** kube-proxy's servicePortEndpointChainName hash: base32(sha256(servicePortName + protocol + endpoint))[:16]. */
export function endpointHash(servicePortName: string, protocol: string, endpoint: string): string {
  return base32(hash('sha256', servicePortName + protocol + endpoint, 'buffer')).slice(0, 16);
}
