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
