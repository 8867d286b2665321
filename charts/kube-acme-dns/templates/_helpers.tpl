{{- define "kube-acme-dns.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kube-acme-dns.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kube-acme-dns.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kube-acme-dns.serviceAccountName" -}}
{{- default (include "kube-acme-dns.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The roles `serve` runs, from the values. */}}
{{- define "kube-acme-dns.roles" -}}
{{- $roles := list "dns" "controller" -}}
{{- if .Values.webhook.enabled }}{{ $roles = append $roles "webhook" }}{{ end -}}
{{- if .Values.api.enabled }}{{ $roles = append $roles "api" }}{{ end -}}
{{- join "," $roles -}}
{{- end }}

{{/* Where the acme-dns API registers accounts: api.namespace, else the release's. */}}
{{- define "kube-acme-dns.apiNamespace" -}}
{{- .Values.api.namespace | default .Release.Namespace -}}
{{- end }}
