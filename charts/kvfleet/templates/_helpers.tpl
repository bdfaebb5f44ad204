{{/* Names and labels. Every object carries the standard app.kubernetes.io labels; selectors use only the
stable subset (name, instance, component), because a Deployment's selector can never change. */}}

{{- define "kvfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvfleet.fullname" -}}
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

{{- define "kvfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "kvfleet.labels" -}}
helm.sh/chart: {{ include "kvfleet.chart" .ctx }}
{{ include "kvfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kvfleet
{{- end -}}

{{- define "kvfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "kvfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kvfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kvfleet.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kvfleet.leaseName" -}}
{{- default (printf "%s-leader" (include "kvfleet.fullname" .)) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{- define "kvfleet.redisName" -}}
{{- printf "%s-redis" (include "kvfleet.fullname" .) -}}
{{- end -}}

{{/* The ledger's Redis URL: the managed Service's in-cluster name, or the external URL. */}}
{{- define "kvfleet.redisUrl" -}}
{{- if .Values.redis.managed -}}
{{- printf "redis://%s.%s.svc:%d" (include "kvfleet.redisName" .) .Release.Namespace (int .Values.redis.port) -}}
{{- else -}}
{{- required "redis.url is required when redis.managed is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Redis password as {name, key}, or an empty dict when there is no password. */}}
{{- define "kvfleet.redisSecretRef" -}}
{{- if .Values.redis.managed -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- toJson (dict "name" .Values.redis.auth.existingSecret "key" .Values.redis.auth.existingSecretKey) -}}
{{- else -}}
{{- toJson (dict "name" (include "kvfleet.redisName" .) "key" "password") -}}
{{- end -}}
{{- else if .Values.redis.passwordSecretRef.name -}}
{{- toJson (dict "name" .Values.redis.passwordSecretRef.name "key" .Values.redis.passwordSecretRef.key) -}}
{{- else -}}
{{- toJson dict -}}
{{- end -}}
{{- end -}}

{{/* Namespaces where Fleets run (NetworkPolicies, PodMonitor); default the release namespace. */}}
{{- define "kvfleet.fleetNamespaces" -}}
{{- toJson (default (list .Release.Namespace) .Values.networkPolicy.fleetNamespaces) -}}
{{- end -}}

{{/* Restricted pod security (Pod Security Standards "restricted"), for every pod and container of the chart. */}}
{{- define "kvfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kvfleet.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* RBAC rules from files/rbac.json; call with the list. Only the three PolicyRule fields are rendered. */}}
{{- define "kvfleet.rbacRules" -}}
{{- range . }}
- apiGroups: {{ toJson .apiGroups }}
  resources: {{ toJson .resources }}
  verbs: {{ toJson .verbs }}
{{- end }}
{{- end -}}
