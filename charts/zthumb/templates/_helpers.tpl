{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "zthumb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the Deployment and Service name the operator targets.
`helm install zthumb charts/zthumb` gives `zthumb` (the release name contains the
chart name); `helm install prod charts/zthumb` gives `prod-zthumb`.
*/}}
{{- define "zthumb.fullname" -}}
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
{{- define "zthumb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: immutable on the Deployment, so only name and instance.
The operator finds the Deployment and Service with exactly these.
*/}}
{{- define "zthumb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zthumb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "zthumb.labels" -}}
helm.sh/chart: {{ include "zthumb.chart" . }}
{{ include "zthumb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zthumb
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Common annotations (metadata.annotations of every resource), or nothing.
*/}}
{{- define "zthumb.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "zthumb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zthumb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: registry/repository:tag or @digest. Usage:
  include "zthumb.image" (dict "image" .Values.image "default" .Chart.AppVersion)
*/}}
{{- define "zthumb.image" -}}
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
Resolve a path against a base directory: absolute paths are kept, relative ones
are joined. Usage: include "zthumb.path" (list BASE PATH)
*/}}
{{- define "zthumb.path" -}}
{{- $base := index . 0 }}
{{- $p := index . 1 }}
{{- if hasPrefix "/" $p }}
{{- clean $p }}
{{- else }}
{{- clean (printf "%s/%s" $base $p) }}
{{- end }}
{{- end }}

{{/*
The tiny decoder's weights file (what the server's AutoencoderTiny loader reads in its directory).
*/}}
{{- define "zthumb.tinyDecoderWeights" -}}
{{- include "zthumb.path" (list .Values.persistence.mountPath (printf "%s/diffusion_pytorch_model.safetensors" .Values.tinyDecoder.path)) }}
{{- end }}

{{/*
An init container running the trainer image's `zthumb-train fetch-model ARGS` (resumable,
SHA256-verified, a no-op once the file is there and verified), writing to the data volume; its
image, token and resources are model.fetch's.
Usage: include "zthumb.fetchInitContainer" (dict "root" $ "name" NAME "args" LIST)
*/}}
{{- define "zthumb.fetchInitContainer" -}}
{{- $root := .root }}
{{- $fetch := $root.Values.model.fetch -}}
- name: {{ .name }}
  image: {{ include "zthumb.image" (dict "image" $fetch.image "default" $root.Chart.AppVersion) | quote }}
  imagePullPolicy: {{ $fetch.image.pullPolicy }}
  args:
    - fetch-model
    {{- range .args }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: HOME
      value: /tmp
    {{- if $fetch.tokenSecret.name }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $fetch.tokenSecret.name }}
          key: {{ $fetch.tokenSecret.key }}
    {{- end }}
  {{- with $fetch.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.containerSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: data
      mountPath: {{ $root.Values.persistence.mountPath }}
      {{- with $root.Values.persistence.subPath }}
      subPath: {{ . }}
      {{- end }}
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/*
The LoRA root as the server sees it.
*/}}
{{- define "zthumb.loraRoot" -}}
{{- include "zthumb.path" (list .Values.persistence.mountPath .Values.lora.root) }}
{{- end }}

{{/*
Device and dtype after defaulting.
*/}}
{{- define "zthumb.device" -}}
{{- .Values.server.device | default (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- end }}

{{- define "zthumb.dtype" -}}
{{- .Values.server.dtype | default (ternary "float16" "float32" (eq (include "zthumb.device" .) "cuda")) }}
{{- end }}

{{/*
The diffusers config directory of the base model as the server sees it (empty: none).
`model.config` when set; else, when the fetch init container brings the config files, the
trainer's convention `<model.path without .safetensors>-config`.
*/}}
{{- define "zthumb.modelConfig" -}}
{{- $mount := .Values.persistence.mountPath }}
{{- if .Values.model.config }}
{{- include "zthumb.path" (list $mount .Values.model.config) }}
{{- else if and .Values.model.fetch.enabled .Values.model.fetch.configUrl }}
{{- include "zthumb.path" (list $mount (printf "%s-config" (trimSuffix ".safetensors" .Values.model.path))) }}
{{- end }}
{{- end }}

{{/*
Name of the PVC mounted at persistence.mountPath.
*/}}
{{- define "zthumb.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "zthumb.fullname" .)) }}
{{- end }}

{{/*
Name of the Secret holding the API key, or nothing when the server runs without one
(auth.enabled=false): auth.existingSecret, else the Secret the chart creates (templates/secret.yaml).
*/}}
{{- define "zthumb.apiKeySecretName" -}}
{{- if .Values.auth.enabled }}
{{- .Values.auth.existingSecret | default (printf "%s-api-key" (include "zthumb.fullname" .)) }}
{{- end }}
{{- end }}

{{/*
"true" when the chart creates the API key Secret (auth.apiKey, or a generated key), else empty.
*/}}
{{- define "zthumb.chartOwnsApiKey" -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/*
"true" when an autoscaler (HPA or KEDA) owns the Deployment's replicas, else empty.
*/}}
{{- define "zthumb.autoscaled" -}}
{{- if or .Values.autoscaling.enabled .Values.autoscaling.keda.enabled }}true{{ end }}
{{- end }}

{{/*
"true" when the PodDisruptionBudget is rendered: pdb.create and more than one replica possible
(replicaCount, or autoscaling.maxReplicas while an autoscaler owns the replicas), else empty.
With a single replica, maxUnavailable 1 lets every eviction through and minAvailable 1 blocks
every node drain: either way the budget would protect nothing.
*/}}
{{- define "zthumb.pdbRendered" -}}
{{- $most := ternary .Values.autoscaling.maxReplicas .Values.replicaCount (eq (include "zthumb.autoscaled" .) "true") }}
{{- if and .Values.pdb.create (gt (int $most) 1) }}true{{ end }}
{{- end }}

{{/*
The inductor cache directory as a sub-path of the volume (persistence.subPath included): the
server's one writable mount of the data volume. Empty when compile.cacheDir lies outside
persistence.mountPath (validateValues refuses that while compile.mode is on).
*/}}
{{- define "zthumb.compileCacheSubPath" -}}
{{- $mount := clean .Values.persistence.mountPath }}
{{- $dir := include "zthumb.path" (list $mount .Values.compile.cacheDir) }}
{{- if hasPrefix (printf "%s/" (trimSuffix "/" $mount)) $dir }}
{{- $relative := trimPrefix (printf "%s/" (trimSuffix "/" $mount)) $dir }}
{{- with .Values.persistence.subPath }}
{{- clean (printf "%s/%s" . $relative) }}
{{- else }}
{{- $relative }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The queue-depth target as a Kubernetes quantity / KEDA threshold string.
*/}}
{{- define "zthumb.targetQueueDepth" -}}
{{- toString .Values.autoscaling.targetQueueDepth }}
{{- end }}

{{/*
The server's queue bound: ZTHUMB_MAX_QUEUE from server.extraEnv, else the server default 8.
*/}}
{{- define "zthumb.maxQueue" -}}
{{- $max := "8" }}
{{- range .Values.server.extraEnv }}
{{- if and (eq (toString .name) "ZTHUMB_MAX_QUEUE") (hasKey . "value") }}
{{- $max = toString .value }}
{{- end }}
{{- end }}
{{- $max }}
{{- end }}

{{/*
Contradictory values: fail with one message that names every value involved.
The schema checks types and ranges; this checks combinations.
*/}}
{{- define "zthumb.validateValues" -}}
{{- $errors := list }}
{{- $device := .Values.server.device }}
{{- if and .Values.gpu.enabled (eq $device "cpu") }}
{{- $errors = append $errors "gpu.enabled=true requests GPUs but server.device=cpu would never use them: set gpu.enabled=false for CPU mode, or server.device=cuda (or empty)" }}
{{- end }}
{{- if and (not .Values.gpu.enabled) (eq $device "cuda") }}
{{- $errors = append $errors "server.device=cuda needs a GPU but gpu.enabled=false: set gpu.enabled=true, or server.device=cpu (or empty)" }}
{{- end }}
{{- if and (not .Values.gpu.enabled) (hasKey (.Values.resources.limits | default dict) .Values.gpu.resourceName) }}
{{- $errors = append $errors (printf "resources.limits sets %s but gpu.enabled=false: remove it, or set gpu.enabled=true and gpu.count" .Values.gpu.resourceName) }}
{{- end }}
{{- if and .Values.gpu.enabled (hasKey (.Values.resources.limits | default dict) .Values.gpu.resourceName) }}
{{- $errors = append $errors (printf "resources.limits sets %s directly: use gpu.count instead" .Values.gpu.resourceName) }}
{{- end }}
{{- if and (eq (include "zthumb.dtype" .) "float16") (eq (include "zthumb.device" .) "cpu") }}
{{- $errors = append $errors "server.dtype=float16 on a CPU device is unsupported for SDXL: use float32 or bfloat16, or leave server.dtype empty" }}
{{- end }}
{{- if and .Values.persistence.existingClaim .Values.persistence.create }}
{{- $errors = append $errors (printf "persistence.existingClaim=%s and persistence.create=true contradict: set persistence.create=false to mount the existing claim, or clear persistence.existingClaim" .Values.persistence.existingClaim) }}
{{- end }}
{{- if and .Values.persistence.enabled (not .Values.persistence.create) (not .Values.persistence.existingClaim) }}
{{- $errors = append $errors "persistence.enabled=true with persistence.create=false needs persistence.existingClaim (the PVC the trainer Jobs write to)" }}
{{- end }}
{{- if and (not .Values.persistence.enabled) .Values.persistence.existingClaim }}
{{- $errors = append $errors "persistence.existingClaim is set but persistence.enabled=false: set persistence.enabled=true to mount it" }}
{{- end }}
{{- if and .Values.auth.apiKey .Values.auth.existingSecret }}
{{- $errors = append $errors "auth.apiKey and auth.existingSecret are both set: keep only auth.existingSecret (preferred) or auth.apiKey" }}
{{- end }}
{{- if and (not .Values.auth.enabled) (or .Values.auth.apiKey .Values.auth.existingSecret) }}
{{- $errors = append $errors "auth.enabled=false serves without an API key, but auth.apiKey or auth.existingSecret is set: remove auth.enabled=false to use the key" }}
{{- end }}
{{- if eq .Values.updateStrategy.type "Recreate" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- $errors = append $errors (printf "updateStrategy.type=Recreate with replicaCount=%d takes every replica down at once on each adapter rollout: use RollingUpdate (e.g. maxSurge=0, maxUnavailable=1 when GPUs are full), or replicaCount=1" (int .Values.replicaCount)) }}
{{- end }}
{{- else }}
{{- $ru := .Values.updateStrategy.rollingUpdate }}
{{- if and (eq (toString $ru.maxUnavailable) "0") (eq (toString $ru.maxSurge) "0") }}
{{- $errors = append $errors "updateStrategy.rollingUpdate.maxUnavailable and maxSurge are both 0: a rollout could never make progress; set maxSurge=1 (default) or use updateStrategy.type=Recreate" }}
{{- end }}
{{- end }}
{{- if and (ne (toString .Values.pdb.minAvailable) "") (ne (toString .Values.pdb.maxUnavailable) "") }}
{{- $errors = append $errors "pdb.minAvailable and pdb.maxUnavailable are both set: a PodDisruptionBudget takes only one" }}
{{- end }}
{{- $fewest := ternary .Values.autoscaling.minReplicas .Values.replicaCount (eq (include "zthumb.autoscaled" .) "true") }}
{{- $minAvailable := toString .Values.pdb.minAvailable }}
{{- if and (include "zthumb.pdbRendered" .) (regexMatch "^[0-9]+$" $minAvailable) (ge (int $minAvailable) (int $fewest)) }}
{{- $errors = append $errors (printf "pdb.minAvailable=%s is not below %s=%d: no node could ever be drained; lower it or use pdb.maxUnavailable" $minAvailable (ternary "autoscaling.minReplicas" "replicaCount" (eq (include "zthumb.autoscaled" .) "true")) (int $fewest)) }}
{{- end }}
{{- if and (ne .Values.compile.mode "off") (not (include "zthumb.compileCacheSubPath" .)) }}
{{- $errors = append $errors (printf "compile.cacheDir=%s is outside persistence.mountPath=%s: the inductor cache is the one writable directory of the data volume, so it must lie on it; give a path relative to persistence.mountPath" .Values.compile.cacheDir .Values.persistence.mountPath) }}
{{- end }}
{{- $enabled := .Values.server.enabledBackends }}
{{- if and $enabled (not (has .Values.server.backend $enabled)) }}
{{- $errors = append $errors (printf "server.backend=%s is not in server.enabledBackends=%s" .Values.server.backend (join "," $enabled)) }}
{{- end }}
{{- if and (or (eq .Values.server.backend "gguf") (has "gguf" $enabled)) (not .Values.model.ggufUnetPath) }}
{{- $errors = append $errors "the gguf backend is enabled but model.ggufUnetPath is empty: point it at the quantized UNet (.gguf)" }}
{{- end }}
{{- if and (or (eq .Values.server.backend "turbo") (has "turbo" $enabled)) (not .Values.model.turboPath) }}
{{- $errors = append $errors "the turbo backend is enabled but model.turboPath is empty: point it at the SDXL-Turbo model" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- $errors = append $errors "metrics.serviceMonitor.enabled=true but the cluster has no monitoring.coreos.com/v1 API (Prometheus Operator CRDs); install them, or pass --api-versions monitoring.coreos.com/v1 to helm template" }}
{{- end }}
{{- if and .Values.model.fetch.enabled (not (hasSuffix ".safetensors" .Values.model.path)) }}
{{- $errors = append $errors (printf "model.fetch.enabled=true downloads one single-file checkpoint, but model.path=%s is not a .safetensors file: point model.path at the file, or set model.fetch.enabled=false for a diffusers directory provisioned another way" .Values.model.path) }}
{{- end }}
{{- if and .Values.tinyDecoder.enabled (not .Values.tinyDecoder.sha256) }}
{{- $errors = append $errors "tinyDecoder.enabled=true needs tinyDecoder.sha256: the SHA256 of the weights file at tinyDecoder.url (the download and the server refuse any other file)" }}
{{- end }}
{{- if and (eq .Values.tinyDecoder.default "tiny") (not .Values.tinyDecoder.enabled) }}
{{- $errors = append $errors "tinyDecoder.default=tiny needs tinyDecoder.enabled=true (the server has no tiny decoder otherwise)" }}
{{- end }}
{{- $as := .Values.autoscaling }}
{{- if and $as.enabled $as.keda.enabled }}
{{- $errors = append $errors "autoscaling.enabled and autoscaling.keda.enabled are both true: two autoscalers would fight over the replicas (KEDA creates its own HPA); keep one" }}
{{- end }}
{{- if include "zthumb.autoscaled" . }}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) }}
{{- $errors = append $errors (printf "autoscaling.minReplicas=%d is above autoscaling.maxReplicas=%d" (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- end }}
{{- if ne (int .Values.replicaCount) 1 }}
{{- $errors = append $errors (printf "replicaCount=%d is ignored while autoscaling is on (the Deployment renders no replicas: the autoscaler owns them); set autoscaling.minReplicas instead and leave replicaCount at 1" (int .Values.replicaCount)) }}
{{- end }}
{{- $maxQueue := include "zthumb.maxQueue" . }}
{{- if and (regexMatch "^[0-9]+$" $maxQueue) (ge (float64 $as.targetQueueDepth) (float64 $maxQueue)) }}
{{- $errors = append $errors (printf "autoscaling.targetQueueDepth=%v is not below the server's queue bound ZTHUMB_MAX_QUEUE=%s: requests would get 429 before the autoscaler ever saw its target; lower the target or raise ZTHUMB_MAX_QUEUE in server.extraEnv" $as.targetQueueDepth $maxQueue) }}
{{- end }}
{{- if and (eq .Values.updateStrategy.type "Recreate") (gt (int $as.maxReplicas) 1) }}
{{- $errors = append $errors (printf "updateStrategy.type=Recreate with autoscaling.maxReplicas=%d takes every replica down at once on each adapter rollout: use RollingUpdate, or autoscaling.maxReplicas=1" (int $as.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if $as.keda.enabled }}
{{- if not $as.keda.serverAddress }}
{{- $errors = append $errors "autoscaling.keda.enabled=true needs autoscaling.keda.serverAddress: the Prometheus URL KEDA queries for zthumb_queue_depth" }}
{{- end }}
{{- if not (.Capabilities.APIVersions.Has "keda.sh/v1alpha1") }}
{{- $errors = append $errors "autoscaling.keda.enabled=true but the cluster has no keda.sh/v1alpha1 API (KEDA is not installed); install KEDA, use autoscaling.enabled (a plain HPA) instead, or pass --api-versions keda.sh/v1alpha1 to helm template" }}
{{- end }}
{{- end }}
{{- if $errors }}
{{- fail (printf "\n\nVALUES VALIDATION:\n  - %s\n" (join "\n  - " $errors)) }}
{{- end }}
{{- end }}
