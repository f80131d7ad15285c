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

{{/*
The operator's per-model NetworkPolicy settings, as JSON for $SELFHEAL_NETWORK_POLICY
(shm_operator.network_policy.network_policy_settings): who may reach the management port (this release's
operator pods), the metrics port (Prometheus) and the inference port (inferenceFrom; empty: anyone).
*/}}
{{- define "selfheal.modelNetworkPolicy" -}}
{{- $operator := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" (include "selfheal.selectorLabels" . | fromYaml)) }}
{{- $prometheus := dict "namespaceSelector" .Values.networkPolicy.prometheus.namespaceSelector "podSelector" .Values.networkPolicy.prometheus.podSelector }}
{{- dict "operator" (list $operator) "metrics" (list $prometheus) "inference" .Values.networkPolicy.inferenceFrom | toJson }}
{{- end }}

{{/*
What the operator does in a namespace it watches (ClusterRole in cluster mode, Role otherwise): exactly
the calls it makes (tests/operator/rbac_audit.py checks a recorded run against these rules), nothing
more. It never reads or lists the objects it creates (create, and patch when they exist), never
deletes (owner references let the garbage collector do that), never reads Secrets (pods and Jobs get
them through envFrom, resolved by the kubelet).
*/}}
{{- define "selfheal.namespacedRules" -}}
# Kopf: lists and watches the custom resource, patches its finalizer/progress annotations, its spec
# (adapter.version after a heal or rollback) and its status subresource.
- apiGroups: ["selfheal.io"]
  resources: ["selfhealingmodels"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["selfheal.io"]
  resources: ["selfhealingmodels/status"]
  verbs: ["patch"]
# Children carry an owner reference with blockOwnerDeletion (kopf.adopt); clusters that enforce
# OwnerReferencesPermissionEnforcement (e.g. OpenShift) require update on the owner's finalizers.
- apiGroups: ["selfheal.io"]
  resources: ["selfhealingmodels/finalizers"]
  verbs: ["update"]
# The children (shm_operator.k8s.ensure: create, patch if it exists): the serving Deployment (read
# back for HotSwap), its Service and ConfigMaps, the healing Jobs (read back to follow them).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "patch"]
# The optional PodDisruptionBudget of a model's pods (spec.serving.disruptionBudget): deleted when
# the spec drops it. Heal Jobs are patched once their result is read (ttlSecondsAfterFinished).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
{{- if .Values.networkPolicy.models }}
# The per-model NetworkPolicy (values: networkPolicy.models).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
{{- end }}
# Pods are read, never changed: the serving pods are watched (an index of the operator, for drift
# and readiness), a heal Job's pod is listed once for its result.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events: Kopf posts core/v1 Events (handler outcomes, kopf.info/warn: heals, rollbacks).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The NetworkPolicy peer that matches Prometheus (values: networkPolicy.prometheus). */}}
{{- define "selfheal.prometheusPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.prometheus.podSelector | nindent 4 }}
{{- end }}
