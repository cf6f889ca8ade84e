{{/* The agent's name: <release>-agent, or the chart's fullnameOverride. */}}
{{- define "gpuslice.agent" -}}
{{- printf "%s-agent" (.Values.fullnameOverride | default .Release.Name) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gpuslice.serviceAccount" -}}
{{- .Values.serviceAccount.name | default (include "gpuslice.agent" .) -}}
{{- end -}}

{{- define "gpuslice.labels" -}}
app.kubernetes.io/name: gpuslice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gpuslice.selector" -}}
app.kubernetes.io/name: gpuslice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{/*
KUBERNETES_SERVICE_HOST/PORT for in-cluster config, when apiServer names
the API server's address (they override the kubelet's Service variables).
*/}}
{{- define "gpuslice.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ required "apiServer.port is required with apiServer.host" .Values.apiServer.port | quote }}
{{- end }}
{{- end }}

{{/* The DRA driver's name: <release>-dra-driver. */}}
{{- define "gpuslice.draDriver" -}}
{{- printf "%s-dra-driver" (.Values.fullnameOverride | default .Release.Name) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The node binaries' config map: <release>-node-config. */}}
{{- define "gpuslice.nodeConfig" -}}
{{- printf "%s-node-config" (.Values.fullnameOverride | default .Release.Name) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The node binaries' one config file (kind NodeConfig): what gpu-agent and
gpu-dra-driver share, read by both from the same ConfigMap, so that the
two cut each GPU model alike and name the same files.
*/}}
{{- define "gpuslice.nodeConfigFile" -}}
{{- $root := .Values.kubeletRoot | trimSuffix "/" -}}
apiVersion: gpuslice.io/v1alpha1
kind: NodeConfig
resourceName: {{ .Values.resourceName | quote }}
podResourcesSocket: {{ $root }}/pod-resources/kubelet.sock
slicing:
  {{- if .Values.slicing.sliceMemory }}
  sliceMemory: {{ .Values.slicing.sliceMemory | quote }}
  {{- else }}
  slicesPerGPU: {{ .Values.slicing.slicesPerGPU }}
  {{- end }}
  {{- with .Values.slicing.models }}
  models:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.mig.sliceProfiles }}
  migProfiles:
    {{- toYaml . | nindent 4 }}
  {{- end }}
migStrategy: {{ .Values.mig.strategy | quote }}
dra:
  enabled: {{ .Values.dra.enabled }}
  preparedClaims: /var/lib/gpuslice/dra-prepared.json
  extendedResource: {{ and .Values.dra.enabled .Values.dra.extendedResource }}
health:
  xidRecovery: {{ .Values.health.xidRecovery | quote }}
  {{- with .Values.health.ignoredXIDs }}
  ignoredXIDs: {{ toJson . }}
  {{- end }}
log:
  level: {{ .Values.log.level | quote }}
  format: {{ .Values.log.format | quote }}
draDriver:
  taints:
    fatalEffect: {{ .Values.dra.taints.fatalEffect | quote }}
    recoverableEffect: {{ .Values.dra.taints.recoverableEffect | quote }}
    {{- with .Values.dra.taints.fatalXIDs }}
    fatalXIDs: {{ toJson . }}
    {{- end }}
  {{- with .Values.dra.sizes }}
  sizes: {{ toJson . }}
  {{- end }}
{{- end -}}

{{/*
A duration of whole seconds, minutes or hours ("15s", "1m", "2h") in
seconds; anything else fails with one clear error.
*/}}
{{- define "gpuslice.seconds" -}}
{{- $v := toString . -}}
{{- if regexMatch "^[0-9]+s$" $v -}}{{ trimSuffix "s" $v | atoi }}
{{- else if regexMatch "^[0-9]+m$" $v -}}{{ mul (trimSuffix "m" $v | atoi) 60 }}
{{- else if regexMatch "^[0-9]+h$" $v -}}{{ mul (trimSuffix "h" $v | atoi) 3600 }}
{{- else -}}{{ fail (printf "duration %q: want a whole number of s, m or h (15s, 1m, 2h)" $v) }}
{{- end -}}
{{- end }}
