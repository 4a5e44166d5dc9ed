{{/* Names, labels and shared fragments. */}}

{{- define "pli.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pli.fullname" -}}
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

{{- define "pli.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pli.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pli.labels" -}}
{{ include "pli.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: admission-webhook
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pli.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pli.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pli.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "pli.tlsSecretName" -}}
{{- printf "%s-tls" (include "pli.fullname" .) -}}
{{- end -}}

{{/* Every name the API server may use for the Service; the certificate must carry them all. */}}
{{- define "pli.dnsNames" -}}
{{- $svc := include "pli.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/* agent.mode as the webhook reads it: auto is decided here, from the cluster's version. */}}
{{- define "pli.agentMode" -}}
{{- if eq .Values.agent.mode "auto" -}}
{{- ternary "sidecar" "off" (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- else -}}
{{- .Values.agent.mode -}}
{{- end -}}
{{- end -}}

{{/* The label the webhook writes on pods with an agent (admission.AGENT_KEY). */}}
{{- define "pli.agentSelector" -}}
matchLabels:
  primus-lens.amd.com/agent: "true"
{{- end -}}

{{/* The webhook's settings file (read by `primus-lens webhook --config`). */}}
{{- define "pli.webhookConfig" -}}
{{- $env := dict "PRIMUS_LENS_WANDB_API_REPORTING" (ternary "true" "false" .Values.reporting.enabled) -}}
{{- with .Values.reporting.apiPreset }}{{ $_ := set $env "PRIMUS_LENS_API_PRESET" . }}{{ end -}}
{{- with .Values.reporting.apiBaseUrl }}{{ $_ := set $env "PRIMUS_LENS_API_BASE_URL" . }}{{ end -}}
{{- with .Values.reporting.outputPath }}{{ $_ := set $env "PRIMUS_LENS_WANDB_OUTPUT_PATH" . }}{{ end -}}
{{- $secretEnv := dict -}}
{{- with .Values.otlp }}{{ if .enabled -}}
{{- $_ := set $env "PRIMUS_LENS_OTLP" "true" -}}
{{- /* Our own names only: every OpenTelemetry SDK in the pod reads the OTEL_* ones (wandb's own
       exporter would send the collector's headers to W&B). */ -}}
{{- $_ := set $env "PRIMUS_LENS_OTLP_ENDPOINT" .endpoint -}}
{{- $_ := set $env "PRIMUS_LENS_OTLP_PROTOCOL" .protocol -}}
{{- with .compression }}{{ $_ := set $env "PRIMUS_LENS_OTLP_COMPRESSION" . }}{{ end -}}
{{- with .timeoutMs }}{{ $_ := set $env "PRIMUS_LENS_OTLP_TIMEOUT" (int64 . | toString) }}{{ end -}}
{{- with .resourceAttributes }}{{ $_ := set $env "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES" . }}{{ end -}}
{{- with .headersSecret.name -}}
{{- $_ := set $secretEnv "PRIMUS_LENS_OTLP_HEADERS" (dict "name" . "key" $.Values.otlp.headersSecret.key) -}}
{{- end -}}
{{- end }}{{ end -}}
{{- $env = merge (deepCopy .Values.reporting.extraEnv) $env -}}
{{- $config := dict
      "image" (include "pli.image" .)
      "imagePullPolicy" .Values.image.pullPolicy
      "sourcePath" "/opt/primus-lens"
      "mountPath" .Values.injection.mountPath
      "volumeSizeLimit" .Values.injection.volumeSizeLimit
      "initResources" .Values.injection.initContainer.resources
      "initSecurityContext" .Values.injection.initContainer.securityContext
      "env" $env
      "downwardAPI" .Values.identity.downwardAPI
      "workloadUidFromAnnotation" .Values.identity.workloadUidFromAnnotation
      "mainContainerAnnotation" .Values.injection.mainContainerAnnotation -}}
{{- with $secretEnv }}{{ $_ := set $config "secretEnv" . }}{{ end -}}
{{- $a := .Values.agent -}}
{{- $_ := set $config "agent" (dict
      "mode" (include "pli.agentMode" .)
      "port" (int $a.port)
      "recordsPath" $a.recordsPath
      "recordsSizeLimit" $a.recordsSizeLimit
      "resources" $a.resources
      "securityContext" $a.securityContext
      "readinessProbe" $a.readinessProbe
      "prometheusAnnotations" $a.prometheus.annotations) -}}
{{- toPrettyJson $config -}}
{{- end -}}

{{/* One webhook entry; .entry is "namespaces" or "pods". */}}
{{- define "pli.webhookEntry" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $s := $v.selectors -}}
{{- $excluded := uniq (append $s.excludedNamespaces $root.Release.Namespace) -}}
- name: {{ .entry }}.inject.primus-lens.amd.com
  admissionReviewVersions: ["v1"]
  clientConfig:
    service:
      name: {{ include "pli.fullname" $root }}
      namespace: {{ $root.Release.Namespace }}
      path: /mutate
      port: 443
    {{- with .caBundle }}
    caBundle: {{ . }}
    {{- end }}
  rules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE"]
      resources: ["pods"]
      scope: Namespaced
  failurePolicy: {{ $v.webhook.failurePolicy }}
  matchPolicy: Equivalent
  sideEffects: None
  timeoutSeconds: {{ $v.webhook.timeoutSeconds }}
  reinvocationPolicy: {{ $v.webhook.reinvocationPolicy }}
  namespaceSelector:
    {{- if eq .entry "namespaces" }}
    matchLabels:
      {{ $s.optInLabel }}: {{ $s.optInValue | quote }}
    {{- end }}
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: {{ toJson $excluded }}
      {{- if eq .entry "pods" }}
      {{- /* pods of opted-in namespaces are the other webhook's: one call per pod */}}
      - key: {{ $s.optInLabel }}
        operator: NotIn
        values: [{{ $s.optInValue | quote }}]
      {{- end }}
  objectSelector:
    {{- if eq .entry "pods" }}
    matchLabels:
      {{ $s.optInLabel }}: {{ $s.optInValue | quote }}
    {{- end }}
    {{- $expressions := $s.objectSelectorExpressions }}
    {{- if eq .entry "namespaces" }}
    {{- $optOut := dict "key" $s.optInLabel "operator" "NotIn" "values" (list $s.optOutValue) }}
    {{- $expressions = prepend $expressions $optOut }}
    {{- end }}
    {{- with $expressions }}
    matchExpressions:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end -}}
