{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "tender.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
A default fully qualified app name, at most 63 characters (DNS label). If the release name
contains the chart name, the release name alone is used.
*/}}
{{- define "tender.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "tender.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of the pods' selector. Immutable once the DaemonSet exists: no version here.
*/}}
{{- define "tender.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tender.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{/*
Labels of every object.
*/}}
{{- define "tender.labels" -}}
{{ include "tender.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "tender.chart" . }}
{{- end -}}

{{/*
The ServiceAccount the agent runs as.
*/}}
{{- define "tender.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tender.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret with the repository password and S3 credentials.
*/}}
{{- define "tender.secretName" -}}
{{- if .Values.credentials.existingSecret -}}
{{- .Values.credentials.existingSecret -}}
{{- else -}}
{{- default (include "tender.fullname" .) .Values.credentials.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret with the bearer token of the agent's mutating API.
*/}}
{{- define "tender.apiTokenSecretName" -}}
{{- if .Values.apiToken.existingSecret -}}
{{- .Values.apiToken.existingSecret -}}
{{- else -}}
{{- printf "%s-api-token" (include "tender.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The PriorityClass of the pods: priorityClassName when set, else the chart's own when it makes one.
*/}}
{{- define "tender.priorityClassName" -}}
{{- if .Values.priorityClassName -}}
{{- .Values.priorityClassName -}}
{{- else if .Values.priorityClass.create -}}
{{- printf "%s-low-priority" (include "tender.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The container image: repository@digest when a digest is set, else repository:tag (tag defaults to
the chart's appVersion).
*/}}
{{- define "tender.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Checksum of what the chart puts in the credentials Secret, so that pods restart when it changes.
*/}}
{{- define "tender.credentialsChecksum" -}}
{{- tpl (print (toYaml .Values.credentials.secretContents) (toYaml .Values.credentials.extraEnvVars)) $ | sha256sum -}}
{{- end -}}

{{/*
Whether the ServiceMonitor is rendered: metrics and the ServiceMonitor enabled, and either the
cluster serves monitoring.coreos.com/v1 ServiceMonitor or autodetect is off.
*/}}
{{- define "tender.serviceMonitorEnabled" -}}
{{- if and .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled (or (not .Values.metrics.serviceMonitor.autodetect) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end -}}
{{- end -}}

{{/*
Mount points inside the container.
*/}}
{{- define "tender.paths.pods" -}}/host_pods{{- end -}}
{{- define "tender.paths.state" -}}/var/lib/tender{{- end -}}
{{- define "tender.paths.config" -}}/etc/tender/config{{- end -}}
{{- define "tender.paths.repository" -}}/etc/tender/repository{{- end -}}
{{- define "tender.paths.api" -}}/etc/tender/api{{- end -}}

{{/*
The policy (configuration.policy) as a map; fails on a policy that is not a YAML map.
*/}}
{{- define "tender.policy" -}}
{{- $policy := fromYaml (default "" .Values.configuration.policy) -}}
{{- if hasKey $policy "Error" -}}
{{- fail (printf "configuration.policy is not a YAML map of settings: %s" (get $policy "Error")) -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}

{{/*
Whether the agent may get Namespaces: rbac.readNamespaces, or a namespaceSelector in the policy.
*/}}
{{- define "tender.readNamespaces" -}}
{{- $policy := include "tender.policy" . | fromYaml -}}
{{- if or .Values.rbac.readNamespaces $policy.namespaceSelector -}}
true
{{- end -}}
{{- end -}}
