{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "zthumb-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of the Deployment, ServiceAccount and RBAC objects.
`helm install zthumb-operator charts/zthumb-operator` gives `zthumb-operator` (the release name
contains the chart name); `helm install ops charts/zthumb-operator` gives `ops-zthumb-operator`.
*/}}
{{- define "zthumb-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "zthumb-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Deployment's selector: immutable, and the same as before the chart existed (name only), so a
Deployment applied from manifests/operator/ upgrades in place.
*/}}
{{- define "zthumb-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zthumb-operator.name" . }}
{{- end }}

{{/*
Labels of the operator pod (the metrics Service selects them).
*/}}
{{- define "zthumb-operator.podLabels" -}}
{{ include "zthumb-operator.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: zthumb
{{- end }}

{{/*
Common labels.
*/}}
{{- define "zthumb-operator.labels" -}}
helm.sh/chart: {{ include "zthumb-operator.chart" . }}
{{ include "zthumb-operator.podLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "zthumb-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zthumb-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the metrics Service.
*/}}
{{- define "zthumb-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "zthumb-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Image reference: registry/repository:tag or @digest. Usage:
  include "zthumb-operator.image" (dict "image" .Values.image "default" .Chart.AppVersion)
*/}}
{{- define "zthumb-operator.image" -}}
{{- $repo := .image.repository }}
{{- if .image.registry }}
{{- $repo = printf "%s/%s" .image.registry .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (toString (.image.tag | default .default)) }}
{{- end }}
{{- end }}

{{/*
A list of strings as a CEL list literal: ['a', 'b']. The schema refuses quotes and backslashes in
the items, so single-quoting is enough.
*/}}
{{- define "zthumb-operator.celList" -}}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (printf "'%s'" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- end }}

{{/*
runPolicy.deploymentSelector as the operator reads it: key=value pairs, comma-separated, sorted.
*/}}
{{- define "zthumb-operator.deploymentSelector" -}}
{{- $pairs := list }}
{{- range $key, $value := .Values.runPolicy.deploymentSelector }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
What the schema cannot say: combinations of values. Each message names the value.
*/}}
{{- define "zthumb-operator.validateValues" -}}
{{- $messages := list }}
{{- if and .Values.rbac.clusterQueues (not .Values.watchNamespaces) }}
{{- $messages = append $messages "rbac.clusterQueues: only for a namespace-scoped install (watchNamespaces); the cluster-wide ClusterRole already reads ClusterQueues" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- $messages = append $messages "metrics.serviceMonitor.enabled: needs metrics.service.enabled (a ServiceMonitor scrapes a Service)" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.healthPort) }}
{{- $messages = append $messages (printf "metrics.port: %d is also healthPort; the metrics and health endpoints need their own ports" (int .Values.metrics.port)) }}
{{- end }}
{{- if and (has "*" .Values.runPolicy.allowedTrainerImages) (gt (len .Values.runPolicy.allowedTrainerImages) 1) }}
{{- $messages = append $messages "runPolicy.allowedTrainerImages: \"*\" allows any image; list it alone" }}
{{- end }}
{{- if $messages }}
{{- fail (printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages)) }}
{{- end }}
{{- end }}

{{/*
The operator's rules on the runs' namespaces (a ClusterRole's or a Role's). Least privilege:
exactly the verbs and resources the operator uses (operator/zthumb_operator/api.py and
handlers.py). Usage: include "zthumb-operator.rules" (dict "clusterScoped" true)
*/}}
{{- define "zthumb-operator.rules" -}}
# Watch the runs; write only their status (kopf uses on.event handlers only, so it
# never patches the objects themselves: no finalizers, no annotations).
- apiGroups: ["zthumb.io"]
  resources: ["lorafinetunes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["zthumb.io"]
  resources: ["lorafinetunes/status"]
  verbs: ["patch"]
# One Job per step: create, watch, adopt (get after 409), delete (unschedulable past its deadline).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Scheduling failures and termination messages of the step pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Multi-node train step (spec.resources.nodes > 1): its headless Service (create; get after 409
# to check the owner). The garbage collector deletes it with the run.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
# The train pod's own identity (operator/zthumb_operator/identity.py): per run a ServiceAccount,
# and a Role + RoleBinding that let it patch only its own run's status; create, and get after 409
# to check the owner. The garbage collector deletes them with the run. RBAC lets the operator
# grant only what it holds itself: patch on lorafinetunes/status, above.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
# ZTHUMB_OPERATOR_REQUIRE_SECRET_LABEL: the labels of the Secrets a run names (admission.py),
# requested as metadata only (PartialObjectMetadata): the operator never reads their data.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Deploy step: read the rollout, patch the pod template env + the rollout-owner annotation.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "patch"]
{{- if .clusterScoped }}
# spec.queueName: read the LocalQueue and its ClusterQueue to refuse a run Kueue could never
# admit whole (operator/zthumb_operator/queues.py). Without Kueue installed these are unused.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues", "clusterqueues"]
  verbs: ["get"]
{{- else }}
# spec.queueName: read the LocalQueue (operator/zthumb_operator/queues.py). ClusterQueues are
# cluster-scoped: a Role cannot grant them (rbac.clusterQueues adds a read-only ClusterRole);
# without it the capacity check is left to Kueue.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues"]
  verbs: ["get"]
{{- end }}
# One Event per transition (kubectl describe lft).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
