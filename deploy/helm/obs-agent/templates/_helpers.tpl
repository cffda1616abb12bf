{{/*
Names and labels. No helm.sh/chart or app.kubernetes.io/managed-by label: the same objects are
applied with kubectl from deploy/kubernetes/daemonset.yaml, where they would be untrue.
*/}}

{{- define "obs-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release's if it names the chart already, as `helm install obs-agent` does. */}}
{{- define "obs-agent.fullname" -}}
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

{{/* What the DaemonSet selects its pods by (immutable once created). */}}
{{- define "obs-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "obs-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "obs-agent.labels" -}}
{{ include "obs-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "obs-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}


{{/*
The rule group of the service-level objectives (deploy/prometheus/rules/slo-objectives.yaml
says how the SLO rules read it): each objective one series without service_name (the default)
and one more per service of slo.services that sets it. The latency threshold's `le` label is
the bucket bound as the agent writes it (whole numbers with ".0").
*/}}
{{- define "obs-agent.sloObjectives" -}}
{{- $services := list (dict "slo" .Values.slo) }}
{{- range $name, $slo := .Values.slo.services }}
{{- $services = append $services (dict "name" $name "slo" $slo) }}
{{- end -}}
- name: obs-agent-slo-objectives
  rules:
    {{- range $services }}
    {{- $name := .name }}
    {{- with dig "availability" "objective" nil .slo }}
    - record: slo:availability_objective:ratio
      expr: vector({{ . }})
      {{- if $name }}
      labels:
        service_name: {{ $name | quote }}
      {{- end }}
    {{- end }}
    {{- with dig "latency" "objective" nil .slo }}
    - record: slo:latency_objective:ratio
      expr: vector({{ . }})
      {{- if $name }}
      labels:
        service_name: {{ $name | quote }}
      {{- end }}
    {{- end }}
    {{- with dig "latency" "threshold_seconds" nil .slo }}
    - record: slo:latency_threshold:seconds
      expr: vector({{ . }})
      labels:
        le: {{ eq (float64 .) (floor .) | ternary (printf "%.1f" (float64 .)) (toString .) | quote }}
        {{- if $name }}
        service_name: {{ $name | quote }}
        {{- end }}
    {{- end }}
    {{- end }}
{{- end }}
