{{/* Names, labels and the watch-mode helpers shared by every template. */}}

{{- define "selfheal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "selfheal.fullname" -}}
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

{{- define "selfheal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "selfheal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "selfheal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "selfheal.labels" -}}
helm.sh/chart: {{ include "selfheal.chart" . }}
{{ include "selfheal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: selfheal
{{- end }}

{{- define "selfheal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "selfheal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "selfheal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True ("true") in cluster mode: one ClusterRole, the operator runs with --all-namespaces. */}}
{{- define "selfheal.clusterMode" -}}
{{- if eq .Values.watch.mode "cluster" }}true{{ end }}
{{- end }}

{{/* The namespaces the operator watches in namespaced mode, without duplicates, in the given order. */}}
{{- define "selfheal.watchNamespaces" -}}
{{- if not .Values.watch.namespaces }}
{{- fail "watch.mode=namespaced needs at least one namespace in watch.namespaces" }}
{{- end }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- end }}

{{/* Where the model pods run: the NetworkPolicy goes into each of these namespaces. */}}
{{- define "selfheal.modelNamespaces" -}}
{{- if .Values.networkPolicy.namespaces }}
{{- .Values.networkPolicy.namespaces | uniq | toJson }}
{{- else if include "selfheal.clusterMode" . }}
{{- list .Release.Namespace | toJson }}
{{- else }}
{{- include "selfheal.watchNamespaces" . }}
{{- end }}
{{- end }}

{{/* What the operator does in a namespace it watches (ClusterRole in cluster mode, Role otherwise). */}}
{{- define "selfheal.namespacedRules" -}}
# The custom resource: Kopf watches it, patches its finalizer/progress annotations and its status.
- apiGroups: ["selfheal.io"]
  resources: ["selfhealingmodels", "selfhealingmodels/status"]
  verbs: ["get", "list", "watch", "patch", "update"]
# The children it owns: the serving Deployment, its Service and ConfigMaps, the healing Jobs.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Pods are only read: drift polling of ready model pods, the heal Job's termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events: Kopf posts core/v1 Events about handlers; the operator reports heals and rollbacks.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The NetworkPolicy peer that matches Prometheus (values: networkPolicy.prometheus). */}}
{{- define "selfheal.prometheusPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.prometheus.podSelector | nindent 4 }}
{{- end }}
