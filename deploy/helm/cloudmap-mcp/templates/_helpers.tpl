{{/* Chart name. */}}
{{- define "cloudmap-mcp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name when it contains the chart name (so "cloudmap-mcp" in
istio-system gives the Service cloudmap-mcp.istio-system.svc). */}}
{{- define "cloudmap-mcp.fullname" -}}
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

{{- define "cloudmap-mcp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cloudmap-mcp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudmap-mcp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cloudmap-mcp.labels" -}}
helm.sh/chart: {{ include "cloudmap-mcp.chart" . }}
{{ include "cloudmap-mcp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: config-source
app.kubernetes.io/part-of: istio
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cloudmap-mcp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cloudmap-mcp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cloudmap-mcp.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "cloudmap-mcp.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "cloudmap-mcp.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "cloudmap-mcp.registryConfigMapName" -}}
{{- default (printf "%s-registry" (include "cloudmap-mcp.fullname" .)) .Values.registryFile.existingConfigMap }}
{{- end }}

{{- define "cloudmap-mcp.sourcesConfigMapName" -}}
{{- default (printf "%s-sources" (include "cloudmap-mcp.fullname" .)) .Values.cloudmap.sourcesFile.existingConfigMap }}
{{- end }}

{{/* One container env entry (indented for the container's env list, with a leading newline), or
nothing when the value is unset/empty. A list is joined with ",", a map becomes k=v pairs. */}}
{{- define "cloudmap-mcp.envVar" -}}
{{- $name := index . 0 }}
{{- $value := index . 1 }}
{{- $s := "" }}
{{- if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}
{{- $items = append $items (include "cloudmap-mcp.scalar" .) }}
{{- end }}
{{- $s = join "," $items }}
{{- else if kindIs "map" $value }}
{{- $pairs := list }}
{{- range $k, $v := $value }}
{{- $pairs = append $pairs (printf "%s=%s" $k (include "cloudmap-mcp.scalar" $v)) }}
{{- end }}
{{- $s = join "," $pairs }}
{{- else if not (kindIs "invalid" $value) }}
{{- $s = include "cloudmap-mcp.scalar" $value }}
{{- end }}
{{- if ne $s "" }}
{{- printf "- name: %s\n  value: %s" $name ($s | quote) | nindent 12 }}
{{- end }}
{{- end }}

{{/* A scalar as the server expects it: whole numbers without an exponent (values files give
float64, so 4194304 would otherwise print as 4.194304e+06). */}}
{{- define "cloudmap-mcp.scalar" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- printf "%d" (int64 .) }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Fail early on values the server would reject at startup. */}}
{{- define "cloudmap-mcp.validate" -}}
{{- if not (has .Values.source (list "cloudmap" "registryFile")) }}
{{- fail (printf "source must be \"cloudmap\" or \"registryFile\", got %q" (toString .Values.source)) }}
{{- end }}
{{- if and (eq .Values.source "registryFile") (not .Values.registryFile.content) (not .Values.registryFile.existingConfigMap) }}
{{- fail "source=registryFile needs registryFile.content or registryFile.existingConfigMap" }}
{{- end }}
{{- if not (has .Values.config.logFormat (list "text" "json")) }}
{{- fail "config.logFormat must be text or json" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and .Values.tls.clientCA.enabled (not .Values.tls.enabled) }}
{{- fail "tls.clientCA.enabled needs tls.enabled" }}
{{- end }}
{{- $shards := int (default 1 .Values.config.shards) }}
{{- if or (gt (add (int .Values.config.grpcPort) $shards -1) 65535) (gt (add (int .Values.service.grpcPort) $shards -1) 65535) }}
{{- fail (printf "config.shards=%d ports from the gRPC port go past 65535" $shards) }}
{{- end }}
{{- end }}

{{/*
The gRPC ports, one per shard (config.shards): a list of {name, port, servicePort}. Shard 0 keeps
the name "grpc"; shard i is "grpc-<i>" on the gRPC port + i.
*/}}
{{- define "cloudmap-mcp.grpcPorts" -}}
{{- $ports := list }}
{{- range $i := until (int (default 1 .Values.config.shards)) }}
{{- $name := ternary "grpc" (printf "grpc-%d" $i) (eq $i 0) }}
{{- $ports = append $ports (dict "name" $name "port" (add (int $.Values.config.grpcPort) $i) "servicePort" (add (int $.Values.service.grpcPort) $i)) }}
{{- end }}
{{- toJson $ports }}
{{- end }}
