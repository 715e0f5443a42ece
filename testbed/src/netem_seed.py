#!/usr/bin/env python3
"""Sets the random seed of netem qdiscs (the link emulator's loss and
jitter pattern), by rtnetlink, for tc versions that lack netem's `seed`
keyword.

Usage: netem_seed.py DEV=SEED [DEV=SEED ...]

For each DEV, the netem qdisc at its root is read back (RTM_GETQDISC) and
changed (RTM_NEWQDISC without NLM_F_CREATE) with its own options and
TCA_NETEM_PRNG_SEED = SEED; the qdisc is read back again to check that
the seed took and that nothing else changed. Exits non-zero with a
message on stderr when a step fails.
"""

import errno
import socket
import struct
import sys

RTM_NEWQDISC = 36
RTM_GETQDISC = 38
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_NETEM_PRNG_SEED = 14
TC_H_ROOT = 0xFFFFFFFF
# struct tc_netem_qopt: latency, limit, loss, gap, duplicate, jitter.
QOPT_LEN = 24
TCMSG = "BBHiIII"
NLMSGHDR = "IHHII"


def align(n):
    return (n + 3) & ~3


def attrs(buf):
    """(type, payload) of each netlink attribute in buf."""
    off = 0
    while off + 4 <= len(buf):
        length, typ = struct.unpack_from("HH", buf, off)
        if length < 4 or off + length > len(buf):
            break
        yield typ & 0x3FFF, buf[off + 4:off + length]
        off += align(length)


def attr(typ, payload):
    raw = struct.pack("HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (align(len(raw)) - len(raw))


class Rtnl:
    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, typ, flags, body):
        """Send one request; return the payloads of the replies of type
        typ (dumps) and raise OSError on a netlink error."""
        self.seq += 1
        hdr = struct.pack(NLMSGHDR, 16 + len(body), typ, flags, self.seq, 0)
        self.sock.send(hdr + body)
        out = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _, seq, _ = struct.unpack_from(NLMSGHDR, data, off)
                if length < 16:
                    raise OSError("malformed netlink reply")
                payload = data[off + 16:off + length]
                off += align(length)
                if seq != self.seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("i", payload)
                    if err:
                        raise OSError(-err, "netlink: " + errno.errorcode.get(-err, str(-err)))
                    return out
                out.append((mtype, payload))


def root_netem(rtnl, ifindex):
    """(handle, options) of the netem qdisc at ifindex's root."""
    body = struct.pack(TCMSG, 0, 0, 0, 0, 0, 0, 0)
    for mtype, payload in rtnl.request(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, body):
        if mtype != RTM_NEWQDISC or len(payload) < 20:
            continue
        _, _, _, index, handle, parent, _ = struct.unpack_from(TCMSG, payload)
        if index != ifindex or parent != TC_H_ROOT:
            continue
        found = dict(attrs(payload[20:]))
        if found.get(TCA_KIND, b"").rstrip(b"\0") == b"netem" and TCA_OPTIONS in found:
            return handle, found[TCA_OPTIONS]
    return None, None


def split(options):
    """The fixed part and the attributes other than the seed; the seed."""
    if len(options) < QOPT_LEN:
        raise OSError("netem options shorter than struct tc_netem_qopt")
    fixed = options[:QOPT_LEN]
    rest, seed = [], None
    for typ, payload in attrs(options[align(QOPT_LEN):]):
        if typ == TCA_NETEM_PRNG_SEED:
            (seed,) = struct.unpack("Q", payload[:8])
        else:
            rest.append((typ, payload))
    return fixed, rest, seed


def reseed(rtnl, dev, seed):
    ifindex = socket.if_nametoindex(dev)
    handle, options = root_netem(rtnl, ifindex)
    if options is None:
        raise OSError("no netem qdisc at the root of " + dev)
    fixed, rest, _ = split(options)
    new = fixed + b"".join(attr(t, p) for t, p in rest)
    new += attr(TCA_NETEM_PRNG_SEED, struct.pack("Q", seed))
    body = struct.pack(TCMSG, socket.AF_UNSPEC, 0, 0, ifindex, handle, TC_H_ROOT, 0)
    body += attr(TCA_KIND, b"netem\0") + attr(TCA_OPTIONS, new)
    rtnl.request(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK, body)
    _, after = root_netem(rtnl, ifindex)
    if after is None:
        raise OSError("the netem qdisc of " + dev + " is gone after the change")
    fixed2, rest2, seed2 = split(after)
    if seed2 != seed:
        raise OSError("%s: netem reports seed %s, not %d" % (dev, seed2, seed))
    if (fixed2, rest2) != (fixed, rest):
        raise OSError(dev + ": netem's other settings changed with the seed")


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: netem_seed.py DEV=SEED [DEV=SEED ...]\n")
        return 2
    rtnl = Rtnl()
    for arg in argv[1:]:
        dev, _, seed = arg.partition("=")
        try:
            reseed(rtnl, dev, int(seed))
        except (OSError, ValueError) as e:
            sys.stderr.write("netem seed of %s: %s\n" % (dev, e))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
