#!/usr/bin/env python3
"""Joins the loopback control plane and the node's network namespace (see e2e/node.sh).

Two jobs, one process, running in the machine's network namespace:

  egress   kube-apiserver's --egress-selector-config-file sends all of its traffic to the
           cluster (the aggregator to APIService backends, kubelet for logs and exec,
           webhooks) through this UNIX socket as HTTP CONNECT host:port. A loopback
           target (localhost, 127.0.0.0/8: the ExternalName Services other tests use for
           processes on loopback) is dialled here; any other IP is dialled from a thread
           that has entered the node's namespace, where kube-proxy's rules route Service
           IPs to pods. Names other than localhost are refused: nothing is ever resolved.
  api      a TCP listener on the node address inside the namespace (the endpoint of the
           `kubernetes` Service, and what kubelet and kube-proxy talk to), forwarded to
           kube-apiserver on 127.0.0.1 here.

So no address outside 127.0.0.0/8 exists in this namespace, and no packet from the
node's namespace ever leaves it: there is no route out, only this process.
"""

import argparse
import ctypes
import ipaddress
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def enter_netns(path):
    """Moves the calling thread (only it) into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if LIBC.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(path, fn):
    """Runs fn() on a thread inside the namespace and returns its result; sockets it
    creates stay in that namespace for good."""
    out = {}

    def run():
        try:
            enter_netns(path)
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def log(*args):
    print("node-bridge:", *args, file=sys.stderr, flush=True)


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def splice(a, b):
    t = threading.Thread(target=pump, args=(b, a), daemon=True)
    t.start()
    pump(a, b)
    t.join()
    a.close()
    b.close()


def is_loopback(host):
    if host == "localhost":
        return True
    return ipaddress.ip_address(host).is_loopback


def read_head(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk or len(head) > 16384:
            raise ValueError("no complete CONNECT request")
        head += chunk
    # The client speaks TLS only after the 200, so nothing follows the request head.
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def egress(conn, netns):
    try:
        method, target, _ = read_head(conn).split(" ", 2)
        if method != "CONNECT":
            raise ValueError(f"expected CONNECT, got {method}")
        host, port = target.rsplit(":", 1)
        host = host.strip("[]")
        if host != "localhost":
            ipaddress.ip_address(host)  # a name would need a resolver: refuse it
        addr = (host, int(port))
        if is_loopback(host):
            upstream = socket.create_connection(addr, timeout=10)
        else:
            upstream = in_netns(netns, lambda: socket.create_connection(addr, timeout=10))
        upstream.settimeout(None)
    except (OSError, ValueError) as e:
        log(f"egress refused: {e}")
        try:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        finally:
            conn.close()
        return
    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    splice(conn, upstream)


def api(conn, target):
    try:
        upstream = socket.create_connection(target, timeout=10)
        upstream.settimeout(None)
    except OSError as e:
        log(f"API server {target} unreachable: {e}")
        conn.close()
        return
    splice(conn, upstream)


def serve(listener, handler, *args):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--netns", required=True, help="path of the node's network namespace")
    p.add_argument("--egress-socket", required=True, help="UNIX socket for kube-apiserver's egress")
    p.add_argument("--api-listen", required=True, help="IP:PORT in the namespace")
    p.add_argument("--api-target", required=True, help="kube-apiserver, 127.0.0.1:PORT")
    a = p.parse_args()

    listen_host, listen_port = a.api_listen.rsplit(":", 1)

    def api_listener():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((listen_host, int(listen_port)))
        s.listen(128)
        return s

    api_sock = in_netns(a.netns, api_listener)
    target_host, target_port = a.api_target.rsplit(":", 1)
    if not ipaddress.ip_address(target_host).is_loopback:
        sys.exit("--api-target must be on loopback")

    threading.Thread(
        target=serve, args=(api_sock, api, (target_host, int(target_port))), daemon=True
    ).start()

    # Last: the socket's existence tells e2e/node.sh both directions are ready.
    if os.path.exists(a.egress_socket):
        os.unlink(a.egress_socket)
    egress_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    egress_listener.bind(a.egress_socket + ".tmp")
    os.chmod(a.egress_socket + ".tmp", 0o600)
    egress_listener.listen(128)
    os.rename(a.egress_socket + ".tmp", a.egress_socket)
    log(f"egress on {a.egress_socket}; {a.api_listen} in {a.netns} -> {a.api_target}")
    serve(egress_listener, egress, a.netns)


if __name__ == "__main__":
    main()
