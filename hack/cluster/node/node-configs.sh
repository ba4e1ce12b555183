# shellcheck shell=bash
# Sourced by hack/cluster/node/real-node.sh only: what the real node's processes read. The node's
# certificates (node_generate_pki, called from `up`'s credentials phase) and node_write_configs:
# the kubelet's and kube-proxy's kubeconfigs, containerd's config (and its registry mapping to a
# closed port), the CNI bridge network, kubelet.yaml, kube-proxy.yaml and CoreDNS's Corefile, all
# under ${NODE_DIR}.
# Needs hack/cluster/lib/state.sh (PKI_DIR, KUBECONFIG_FILE, sign_cert, write_kubeconfig) and
# real-node.sh's settings (NODE_*, POD_CIDR, SERVICE_CIDR, CLUSTER_DNS_IP, CONTAINERD_SOCK,
# RUNC_ROOT, PAUSE_IMAGE, the *_PORT variables).

node_generate_pki() {
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The kubelet's own identity: the Node authorizer and NodeRestriction then
  # limit it to its node and the pods bound to it.
  sign_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" "${client}"
  sign_cert kubelet-serving "/CN=${NODE_NAME}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${NODE_IP},DNS:${NODE_NAME}"
  sign_cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "${client}"
  # The bootstrap ClusterRoleBinding system:node-proxier names this user.
  sign_cert kube-proxy "/CN=system:kube-proxy" "${client}"
}

node_write_configs() {
  mkdir -p "${NODE_DIR}"/{cni/net.d,cni/ipam,run,containerd-state,kubelet/pki,pod-logs,volumes,certs.d/_default}
  write_kubeconfig "${NODE_DIR}/kubelet.kubeconfig" "system:node:${NODE_NAME}" kubelet
  write_kubeconfig "${NODE_DIR}/kube-proxy.kubeconfig" system:kube-proxy kube-proxy

  # Registry lookups go to a closed loopback port: a missing image fails at
  # once and nothing is ever pulled from outside this machine.
  cat >"${NODE_DIR}/certs.d/_default/hosts.toml" <<'EOF'
server = "http://127.0.0.1:1"
[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF

  cat >"${NODE_DIR}/containerd.toml" <<EOF
version = 3
root = "${NODE_CONTAINERD_ROOT}"
state = "${NODE_DIR}/containerd-state"
# opt writes /opt/containerd, nri listens on /var/run/nri: neither is needed.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"]

[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${NODE_RUN}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "${PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "${NODE_DIR}/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE: lowering oom_score_adj fails.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "${NODE_DIR}/cni/net.d"
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "${RUNC_ROOT}"
        SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF

  # Bridge without gateway mode (that would switch on host-wide forwarding):
  # the script put 10.88.0.1 on zt0 itself. Pods get routes to the pod and
  # Service ranges only, and no default route.
  cat >"${NODE_DIR}/cni/net.d/10-zthumb.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "zthumb",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}", "rangeStart": "10.88.1.1"}]],
        "routes": [{"dst": "${SERVICE_CIDR}", "gw": "${NODE_IP}"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"${NODE_DIR}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts are refused from 1.35 on unless this is false.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: ${PKI_DIR}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI_DIR}/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${PKI_DIR}/ca.crt}
# Only holders of a certificate of the cluster CA get this far (the apiserver
# and the admin); they may do everything.
authorization: {mode: AlwaysAllow}
clusterDNS: [${CLUSTER_DNS_IP}]
clusterDomain: cluster.local
resolvConf: ""
failSwapOn: false
oomScoreAdj: 0
maxPods: 50
podLogsDir: ${NODE_DIR}/pod-logs
volumePluginDir: ${NODE_DIR}/kubelet/volume-plugins
# Imported images are never garbage-collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF

  cat >"${NODE_DIR}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: ${NODE_DIR}/kube-proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
clusterCIDR: ${POD_CIDR}
nodePortAddresses: ["${NODE_IP}/32"]
healthzBindAddress: 127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${KUBE_PROXY_METRICS_PORT}
# Leave the host-wide conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

  # No forward plugin: names outside the cluster zones are REFUSED at once.
  cat >"${NODE_DIR}/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${NODE_IP}
    errors
    health 127.0.0.1:${COREDNS_HEALTH_PORT}
    ready 127.0.0.1:${COREDNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${KUBECONFIG_FILE} zthumb-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
}

