# shellcheck shell=bash
# Sourced by hack/cluster/cluster.sh only: phase 2 of `up`, the certificates and a kubeconfig
# per client. One CA signs the apiserver serving cert and every client cert; the front-proxy CA
# and the ServiceAccount signing key pair are separate (as in kubeadm).
# Needs hack/cluster/lib/state.sh (PKI_DIR, STATE_DIR, KUBECONFIG_FILE, HOST, REAL_NODE,
# sign_cert, write_kubeconfig) and hack/cluster/node/real-node.sh (node_generate_pki,
# node_bridge_up).

generate_pki() {
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  mkdir -p "${PKI_DIR}"
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "${PKI_DIR}/ca.key" \
    -out "${PKI_DIR}/ca.crt" -days 3650 -sha256 -subj "/CN=zthumb-local-ca" 2>/dev/null
  # 10.96.0.1 is the `kubernetes` Service IP of --service-cluster-ip-range.
  sign_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${HOST},IP:10.96.0.1,IP:10.88.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign_cert admin "/O=system:masters/CN=zthumb-admin" "${client}"
  # Dedicated identities so RBAC's bootstrap roles for these components apply.
  sign_cert controller-manager "/CN=system:kube-controller-manager" "${client}"
  sign_cert scheduler "/CN=system:kube-scheduler" "${client}"
  sign_cert kwok "/O=system:masters/CN=kwok-controller" "${client}"
  # Front-proxy (requestheader) CA: without it kube-controller-manager and
  # kube-scheduler log "missing content for CA bundle" forever, and aggregated
  # APIs (metrics-server and the like) could not be registered.
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "${PKI_DIR}/front-proxy-ca.key" \
    -out "${PKI_DIR}/front-proxy-ca.crt" -days 3650 -sha256 -subj "/CN=zthumb-front-proxy-ca" 2>/dev/null
  sign_cert front-proxy-client "/CN=front-proxy-client" "${client}" front-proxy-ca
  openssl genrsa -out "${PKI_DIR}/sa.key" 2048 2>/dev/null
  openssl rsa -in "${PKI_DIR}/sa.key" -pubout -out "${PKI_DIR}/sa.pub" 2>/dev/null
  if [[ "${REAL_NODE}" == 1 ]]; then node_generate_pki; fi
  chmod 600 "${PKI_DIR}"/*.key
}

# `up`, phase 2 (after the state directory is ours and failures clean up): the real node's
# bridge, the certificates and a kubeconfig per client.
up_credentials() {
  if [[ "${REAL_NODE}" == 1 ]]; then
    touch "${STATE_DIR}/.real-node"
    node_bridge_up
  fi
  generate_pki
  write_kubeconfig "${KUBECONFIG_FILE}" zthumb-admin admin
  write_kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  write_kubeconfig "${STATE_DIR}/scheduler.kubeconfig" system:kube-scheduler scheduler
  write_kubeconfig "${STATE_DIR}/kwok.kubeconfig" kwok-controller kwok
}
