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
