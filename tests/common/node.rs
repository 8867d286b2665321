//! The real node of the local cluster (`e2e/node.sh`): its network namespace, images
//! built for it, a LoadBalancer, and a path for DNS from loopback to an address inside.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

pub const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e");

/// Runs an `e2e/` script for the cluster of KUBECONFIG (its state dir is the
/// kubeconfig's); returns its trimmed stdout. Its progress goes to the test's stderr.
pub fn script(path: &str, args: &[&str]) -> String {
    let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").expect("KUBECONFIG is set"));
    let output = std::process::Command::new(format!("{E2E}/{path}"))
        .args(args)
        .env("KAD_CLUSTER_DIR", kubeconfig.parent().unwrap())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run e2e/{path}: {e}"));
    assert!(output.status.success(), "e2e/{path} {args:?} failed");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs `f` on a thread of its own inside the node's network namespace: the sockets it
/// opens live there, where the node, pod, Service and LoadBalancer addresses are.
pub fn in_node<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_node(f)
        .join()
        .expect("the thread in the node's network namespace")
}

/// Runs `f` on a thread of its own inside the node's network namespace, in the
/// background; threads it spawns stay in the namespace too.
pub fn spawn_in_node<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = script("node.sh", &["netns"]);
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("open {path} (is the node up? e2e/node.sh up): {e}"));
        // setns(2) with CLONE_NEWNET moves only the calling thread.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A DNS path from loopback to `target` inside the node's network namespace, as the
/// Internet is between a resolver and a LoadBalancer: UDP and TCP on one 127.0.0.1 port,
/// each query relayed from a socket of its own (a fresh source port, as resolvers use).
/// Lives as long as the test process.
pub fn dns_relay(target: SocketAddr) -> SocketAddr {
    // Both listeners on loopback, made here, outside the node's namespace.
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    spawn_in_node(move || {
        std::thread::spawn(move || {
            let mut buf = [0u8; 65535];
            while let Ok((len, client)) = udp.recv_from(&mut buf) {
                let (query, reply_to) = (buf[..len].to_vec(), udp.try_clone().unwrap());
                std::thread::spawn(move || {
                    let upstream = UdpSocket::bind("0.0.0.0:0").unwrap();
                    upstream
                        .set_read_timeout(Some(Duration::from_secs(3)))
                        .unwrap();
                    upstream.send_to(&query, target).unwrap();
                    let mut answer = [0u8; 65535];
                    if let Ok(len) = upstream.recv(&mut answer) {
                        let _ = reply_to.send_to(&answer[..len], client);
                    }
                });
            }
        });
        for client in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(3))
                else {
                    return;
                };
                let (mut client_in, mut upstream_out) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let forward = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_in, &mut upstream_out);
                    let _ = upstream_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut upstream_in, mut client_out) = (upstream, client);
                let mut buf = [0u8; 16384];
                while let Ok(n) = upstream_in.read(&mut buf) {
                    if n == 0 || client_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = client_out.shutdown(std::net::Shutdown::Both);
                let _ = forward.join();
            });
        }
    });
    addr
}

/// Builds the image from this checkout's release binary (`e2e/image.sh`, cached by the
/// binary's hash) and loads it into the node; returns (repository, tag).
pub fn load_image() -> (String, String) {
    let reference = script("image.sh", &[]);
    let (repository, tag) = reference
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("e2e/image.sh printed {reference:?}, not REPOSITORY:TAG"));
    (repository.to_string(), tag.to_string())
}

/// What a cloud's load-balancer controller does: once the Service `namespace/name`
/// exists, publish `ip` (an address inside the node's namespace) in its
/// `status.loadBalancer`; kube-proxy then forwards that address to the Service's pods.
pub fn assign_load_balancer(
    client: Client,
    namespace: &str,
    name: &str,
    ip: &str,
) -> tokio::task::JoinHandle<()> {
    let services: Api<Service> = Api::namespaced(client, namespace);
    let (name, ip) = (name.to_string(), ip.to_string());
    tokio::spawn(async move {
        super::eventually(
            "the LoadBalancer Service exists",
            Duration::from_secs(120),
            || async { services.get_opt(&name).await.ok().flatten() },
        )
        .await;
        let status = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": ip }] } } });
        services
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch the Service's load-balancer status");
    })
}

/// What a user looks at when pods do not come up: pods, events, the node's kubelet log.
pub fn diagnose(namespace: &str) -> String {
    let mut out = String::new();
    for args in [
        vec![
            "get",
            "pods,endpointslices,services",
            "-o",
            "wide",
            "-n",
            namespace,
        ],
        vec!["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
    ] {
        let output = std::process::Command::new("kubectl").args(&args).output();
        if let Ok(o) = output {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
    }
    out
}
