# shellcheck shell=bash
# Sourced by hack/cluster/cluster.sh only: phases 3 to 5 of `up`, the control plane's processes
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), and apiserver_ready / is_up,
# which `up` and `status` ask.
# Needs hack/cluster/lib/state.sh (STATE_DIR, PKI_DIR, HOST, API_HOST, APISERVER_PORT,
# APISERVER_URL, REAL_NODE, UP_TIMEOUT, start_component, pid_of, wait_until), cluster.sh's
# settings (ETCD_PORT, ETCD_PEER_PORT, KCM_PORT, SCHEDULER_PORT) and
# hack/cluster/node/real-node.sh (NODE_BRIDGE).

apiserver_ready() {
  # With the real node the apiserver is on the bridge address: never dial it
  # when the bridge is not there (the packets would take the default route).
  if [[ "${API_HOST}" != "${HOST}" ]] && ! ip -4 -o addr show dev "${NODE_BRIDGE}" 2>/dev/null | grep -qF " ${API_HOST}/"; then
    return 1
  fi
  curl -fsS --max-time 2 --cacert "${PKI_DIR}/ca.crt" \
    --cert "${PKI_DIR}/admin.crt" --key "${PKI_DIR}/admin.key" \
    "${APISERVER_URL}/readyz" >/dev/null
}

is_up() { pid_of kube-apiserver >/dev/null && [[ -f "${PKI_DIR}/admin.crt" ]] && apiserver_ready; }

# `up`, phase 3: etcd, until healthy.
up_etcd() {
  # --unsafe-no-fsync: throwaway test data, and fsync dominates on slow disks.
  start_component etcd \
    --name zthumb --data-dir "${STATE_DIR}/etcd" \
    --listen-client-urls "http://${HOST}:${ETCD_PORT}" \
    --advertise-client-urls "http://${HOST}:${ETCD_PORT}" \
    --listen-peer-urls "http://${HOST}:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://${HOST}:${ETCD_PEER_PORT}" \
    --initial-cluster "zthumb=http://${HOST}:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync --log-level warn
  wait_until "${UP_TIMEOUT}" 0.5 "etcd health" \
    curl -fsS --max-time 2 "http://${HOST}:${ETCD_PORT}/health"
}

# `up`, phase 4: kube-apiserver, until /readyz.
up_apiserver() {
  # Without the real node: --endpoint-reconciler-type=none, since a loopback
  # advertise address is not a valid Endpoints IP and nothing runs in-cluster.
  # With it: bound to and advertised on the bridge address, the `kubernetes`
  # Service gets that endpoint, and the apiserver reaches the kubelet by its
  # InternalIP with its own client certificate, verifying the kubelet's.
  # PodSecurity and ServiceAccount admission are on by default.
  local apiserver_mode_flags=(--endpoint-reconciler-type none)
  if [[ "${REAL_NODE}" == 1 ]]; then
    apiserver_mode_flags=(
      --endpoint-reconciler-type lease
      --kubelet-client-certificate "${PKI_DIR}/apiserver-kubelet-client.crt"
      --kubelet-client-key "${PKI_DIR}/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "${PKI_DIR}/ca.crt"
      --kubelet-preferred-address-types "InternalIP,Hostname"
    )
  fi
  start_component kube-apiserver \
    --bind-address "${API_HOST}" --advertise-address "${API_HOST}" \
    --secure-port "${APISERVER_PORT}" \
    --etcd-servers "http://${HOST}:${ETCD_PORT}" \
    --cert-dir "${STATE_DIR}/apiserver-certs" \
    --tls-cert-file "${PKI_DIR}/apiserver.crt" \
    --tls-private-key-file "${PKI_DIR}/apiserver.key" \
    --client-ca-file "${PKI_DIR}/ca.crt" \
    --requestheader-client-ca-file "${PKI_DIR}/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${PKI_DIR}/front-proxy-client.crt" \
    --proxy-client-key-file "${PKI_DIR}/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${PKI_DIR}/sa.pub" \
    --service-account-signing-key-file "${PKI_DIR}/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    "${apiserver_mode_flags[@]}" \
    --allow-privileged=true \
    --profiling=false
  wait_until "${UP_TIMEOUT}" 0.5 "kube-apiserver /readyz" apiserver_ready
}

# `up`, phase 5: kube-controller-manager and kube-scheduler (their readiness shows in phase 6).
up_controllers() {
  # --flex-volume-plugin-dir: the default makes it mkdir
  # /usr/libexec/kubernetes/... on the host; keep everything in STATE_DIR.
  start_component kube-controller-manager \
    --kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" \
    --authentication-kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" \
    --authorization-kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" \
    --bind-address "${HOST}" --secure-port "${KCM_PORT}" \
    --cert-dir "${STATE_DIR}/kcm-certs" \
    --controllers '*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file "${PKI_DIR}/sa.key" \
    --root-ca-file "${PKI_DIR}/ca.crt" \
    --cluster-signing-cert-file "${PKI_DIR}/ca.crt" \
    --cluster-signing-key-file "${PKI_DIR}/ca.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --flex-volume-plugin-dir "${STATE_DIR}/flexvolume" \
    --leader-elect=false

  start_component kube-scheduler \
    --kubeconfig "${STATE_DIR}/scheduler.kubeconfig" \
    --authentication-kubeconfig "${STATE_DIR}/scheduler.kubeconfig" \
    --authorization-kubeconfig "${STATE_DIR}/scheduler.kubeconfig" \
    --bind-address "${HOST}" --secure-port "${SCHEDULER_PORT}" \
    --cert-dir "${STATE_DIR}/scheduler-certs" \
    --leader-elect=false
}
