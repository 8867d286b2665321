#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/<target>/. Run from anywhere; the seeds are
committed, so this only needs rerunning when they change."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
UDP, TCP = b"\x00", b"\x01"  # dns_answer's first byte: the transport


def name(text):
    out = b""
    for label in text.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def opt(size=1232, do=False, options=b""):
    ttl = 0x8000 if do else 0
    return b"\x00" + struct.pack(">HHIH", 41, size, ttl, len(options)) + options


def query(qname, qtype, qclass=1, edns=None, qid=0x4242, flags=0x0100):
    arcount = 1 if edns is not None else 0
    head = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, arcount)
    return head + name(qname) + struct.pack(">HH", qtype, qclass) + (edns or b"")


A, NS, SOA, TXT, AAAA, CAA, ANY, AXFR = 1, 2, 6, 16, 28, 257, 255, 252
ACCOUNT = "d420c923-bbd7-4056-ab64-c3ca54c9b3cf.auth.example.test"
NSID = struct.pack(">HH", 3, 0)
COOKIE = struct.pack(">HH", 10, 8) + b"\x01\x02\x03\x04\x05\x06\x07\x08"

dns = {
    "a-apex": UDP + query("auth.example.test", A),
    "a-api": UDP + query("api.auth.example.test", A),
    "aaaa-ns-edns": UDP + query("ns.auth.example.test", AAAA, edns=opt()),
    "txt-account": UDP + query(ACCOUNT, TXT),
    "txt-account-edns-do": UDP + query(ACCOUNT, TXT, edns=opt(4096, do=True)),
    "txt-big-udp": UDP + query("big.auth.example.test", TXT),
    "txt-big-tcp": TCP + query("big.auth.example.test", TXT),
    "txt-big-edns": UDP + query("big.auth.example.test", TXT, edns=opt(1232)),
    "txt-mixed-case": UDP + query("D420C923-bbd7-4056-AB64-c3ca54c9b3cf.Auth.Example.Test", TXT),
    "soa-apex-tcp": TCP + query("auth.example.test", SOA),
    "ns-apex-nsid": UDP + query("auth.example.test", NS, edns=opt(1232, options=NSID)),
    "caa-apex": UDP + query("auth.example.test", CAA),
    "any-apex": UDP + query("auth.example.test", ANY),
    "nxdomain": UDP + query("nothing.auth.example.test", A),
    "empty-non-terminal": UDP + query("sub.auth.example.test", A),
    "outside-zone": UDP + query("example.org", A),
    "axfr-tcp": TCP + query("auth.example.test", AXFR),
    "cookie": UDP + query("auth.example.test", SOA, edns=opt(1232, options=COOKIE)),
    "edns-small": UDP + query(ACCOUNT, TXT, edns=opt(100)),
    "edns-version-1": UDP + query("auth.example.test", A, edns=opt()[:5] + b"\x00\x01" + opt()[7:]),
    "chaos-id-server": UDP + query("id.server", TXT, qclass=3),
    "notify-opcode": UDP + query("auth.example.test", SOA, flags=0x2000),
    # A TCP query still carrying its two-byte length prefix, as a confused client sends it.
    "tcp-length-prefixed": TCP + (lambda q: struct.pack(">H", len(q)) + q)(query(ACCOUNT, TXT)),
    "compressed-name": UDP + struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",
}

present = {
    "apiVersion": "acme.cert-manager.io/v1alpha1",
    "kind": "ChallengePayload",
    "request": {
        "uid": "",
        "action": "Present",
        "type": "dns-01",
        "dnsName": "example.com",
        "key": "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo",
        "resourceNamespace": "default",
        "resolvedFQDN": "_acme-challenge.example.com.",
        "resolvedZone": "example.com.",
        "allowAmbientCredentials": False,
        "config": None,
    },
}
cleanup = json.loads(json.dumps(present))
cleanup["request"].update(action="CleanUp", config={"accountRef": {"name": "web", "namespace": "other"}})
follow = json.loads(json.dumps(present))
follow["request"].update(dnsName="www.example.net",
                         resolvedFQDN="d420c923-bbd7-4056-ab64-c3ca54c9b3cf.auth.example.test.")
challenge = {
    "present": json.dumps(present),
    "cleanup-account-ref": json.dumps(cleanup),
    "cname-followed": json.dumps(follow),
    "no-request": '{"apiVersion":"acme.cert-manager.io/v1alpha1","kind":"ChallengePayload"}',
    "bad-config": json.dumps({"request": {"action": "Present", "config": {"accountRef": 3}}}),
}

acme = {
    "register-empty": "",
    "register-null": "null",
    "register-allowfrom": '{"allowfrom":["192.0.2.0/24","[2001:db8::/32]"]}',
    "register-bad-cidr": '{"allowfrom":["192.0.2.1"]}',
    "update": '{"subdomain":"d420c923-bbd7-4056-ab64-c3ca54c9b3cf",'
              '"txt":"LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo"}',
    "update-upper-keys": '{"SubDomain":"abc","TXT":"x"}',
    "api-user": "{D420C923-BBD7-4056-AB64-C3CA54C9B3CF}",
    "api-key": "abcdefghijABCDEFGHIJ0123456789-_abcdefgh",
}

crd = {
    "domain": "example.com",
    "label": "d420c923-bbd7-4056-ab64-c3ca54c9b3cf",
    "cidr4": "192.0.2.0/24",
    "cidr6": "2001:db8::/32",
    "bad-cidr": "300.0.0.0/8",
    "record-a": "api A 192.0.2.10",
    "record-aaaa-abs": "v6.auth.example.test. AAAA 2001:db8::1",
    "record-txt": 'info TXT "v=spf1 -all"',
    "record-caa": '@ CAA 0 issue "letsencrypt.org"',
    "record-outside": "www.example.org. A 192.0.2.1",
    "record-bad": "api MX 10 mail",
    "spec-yaml": "domains: [example.com, www.example.com]\nsubdomain: abc\nallowFrom: [192.0.2.0/24]\n",
    "spec-json": '{"domains":["example.org"],"allowFrom":["2001:db8::/32"]}',
    "too-long-label": "a" * 64 + ".example",
    "identity": "replica-0",
}

for target, seeds in [("dns_answer", dns), ("challenge_payload", challenge),
                      ("acme_api", acme), ("crd_values", crd)]:
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    for seed, content in seeds.items():
        data = content if isinstance(content, bytes) else content.encode()
        with open(os.path.join(HERE, target, seed), "wb") as f:
            f.write(data)
