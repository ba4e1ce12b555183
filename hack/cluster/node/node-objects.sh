# shellcheck shell=bash
# Sourced by hack/cluster/node/real-node.sh only: the real node's objects in the cluster. The
# kube-dns Service with a hand-made EndpointSlice (CoreDNS runs on the host), the default
# StorageClass of the hostPath provisioner, and the node's nvidia.com/gpu capacity (patched into
# its status: there is no device plugin).
# Needs hack/cluster/lib/state.sh (kubectl_admin) and real-node.sh's settings (NODE_NAME, NODE_IP,
# NODE_GPUS, CLUSTER_DNS_IP, STORAGE_CLASS).

node_cluster_objects() {
  cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: ${CLUSTER_DNS_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
# CoreDNS runs on the host, bound to the bridge address: a hand-made slice.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: hack-cluster.zthumb.io
addressType: IPv4
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
endpoints:
- addresses: ["${NODE_IP}"]
  conditions: {ready: true}
  nodeName: ${NODE_NAME}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: ${STORAGE_CLASS}
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: zthumb.io/hostpath
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
# Only the real node has the volumes' directory; kwok's nodes must never be
# picked for a pod whose claim is still unbound.
allowedTopologies:
- matchLabelExpressions:
  - key: kubernetes.io/hostname
    values: [${NODE_NAME}]
EOF
}

node_gpu_patch() {
  kubectl_admin patch node "${NODE_NAME}" --subresource=status --type=merge \
    -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"${NODE_GPUS}\"},\"allocatable\":{\"nvidia.com/gpu\":\"${NODE_GPUS}\"}}}" >/dev/null
}

node_gpu_ok() {
  [[ "$(kubectl_admin get node "${NODE_NAME}" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "${NODE_GPUS}" ]]
}
