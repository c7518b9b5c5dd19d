{{/* Chart name, truncated to 63 characters (a label value's limit). */}}
{{- define "voxfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, plus the chart name unless it already contains it. */}}
{{- define "voxfleet.fullname" -}}
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

{{- define "voxfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object the chart creates. */}}
{{- define "voxfleet.labels" -}}
helm.sh/chart: {{ include "voxfleet.chart" . }}
{{ include "voxfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voxfleet
{{- end }}

{{/* The immutable subset used by selectors. */}}
{{- define "voxfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voxfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "voxfleet.operator.name" -}}
{{- printf "%s-operator" (include "voxfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voxfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voxfleet.operator.name" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag of the operator/router image (tag defaults to the appVersion). */}}
{{- define "voxfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* repository:tag of the STT pod image; `cuda`: the GPU variant (tag + gpuTagSuffix). */}}
{{- define "voxfleet.podImage" -}}
{{- $root := index . 0 }}{{- $device := index . 1 }}
{{- $tag := default $root.Chart.AppVersion $root.Values.podImage.tag }}
{{- if eq $device "cuda" }}{{- $tag = printf "%s%s" $tag $root.Values.podImage.gpuTagSuffix }}{{- end }}
{{- printf "%s:%s" $root.Values.podImage.repository $tag }}
{{- end }}

{{/* Name of the default SttPool; also the prefix of its router Service (<pool>-router). */}}
{{- define "voxfleet.pool.name" -}}
{{- default (include "voxfleet.fullname" .) .Values.pool.name | trunc 40 | trimSuffix "-" }}
{{- end }}
