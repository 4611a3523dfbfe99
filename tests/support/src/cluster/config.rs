//! The configuration files of the node's components, as `../shared/notes/real-cluster.md` found they must
//! be on these machines (cgroup v1, no lowering of `oom_score_adj`, loopback only).

use std::path::Path;

use super::Layout;

/// containerd (config version 2): its own root, state and socket; runc with cgroupfs; the CNI bridge of
/// [`cni`]; images only from `certs.d` (see [`hosts`]).
pub(super) fn containerd(l: &Layout, sandbox_image: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Lowering oom_score_adj is refused on these machines: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        root = l.dir.join("containerd/root").display(),
        state = l.run.display(),
        sock = l.containerd_socket().display(),
        cni = l.dir.join("cni").display(),
        certs = l.dir.join("certs.d").display(),
    )
}

/// `hosts.toml` of one registry host served at `server`, over TLS trusting `ca` when given.
pub(super) fn hosts(server: &str, ca: Option<&Path>) -> String {
    let mut t = format!(
        "server = \"{server}\"\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    if let Some(ca) = ca {
        t.push_str(&format!("  ca = \"{}\"\n", ca.display()));
    }
    t
}

/// Every registry but the loopback one resolves to a closed loopback port: an image the test registry
/// lacks never makes containerd look up an outside name.
pub(super) const CLOSED: &str = "http://127.0.0.1:9";

/// The CNI bridge network: the pods' subnet on bridge `bridge`, whose gateway is the host's address.
pub(super) fn cni(bridge: &str, subnet: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "airlock-test",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir}},
            {"type": "loopback"}
        ]
    })
    .to_string()
}

/// The kubelet: cgroupfs on cgroup v1, listening on 127.0.0.1 only, clients authenticated by the
/// cluster CA.
pub(super) fn kubelet(l: &Layout, port: u16, healthz_port: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# A test machine's disk may be fuller than a node's: evict only when it is nearly full.
evictionHard: {{memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
"#,
        sock = l.containerd_socket().display(),
        ca = l.dir.join("pki/ca.crt").display(),
    )
}

/// The scheduler: one instance, no leader election.
pub(super) fn scheduler(kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: {}\nleaderElection:\n  leaderElect: false\n",
        kubeconfig.display()
    )
}
