{{/*
Names are fixed (not derived from the release name): the webhook configuration, ClusterRoles and CRDs are
cluster-scoped, so the chart supports one release per cluster, and the operator, gateway and docs can refer to
every object by a known name.
*/}}
{{- define "narrowlink.operatorName" -}}narrowlink-operator{{- end -}}
{{- define "narrowlink.gatewayName" -}}narrowlink-gateway{{- end -}}
{{- define "narrowlink.webhookName" -}}narrowlink-sidecar-injector{{- end -}}
{{- define "narrowlink.webhookCertName" -}}narrowlink-webhook{{- end -}}
{{- define "narrowlink.webhookSecretName" -}}narrowlink-webhook-tls{{- end -}}
{{- define "narrowlink.selfSignedIssuerName" -}}narrowlink-selfsigned{{- end -}}
{{- define "narrowlink.caName" -}}narrowlink-ca{{- end -}}
{{- define "narrowlink.leaseName" -}}narrowlink-operator{{- end -}}
{{- define "narrowlink.discoveryName" -}}narrowlink-discovery{{- end -}}
{{/* Port constants: the webhook and metrics ports of the operator, the wss port of the gateway container. */}}
{{- define "narrowlink.webhookPort" -}}9443{{- end -}}
{{- define "narrowlink.metricsPort" -}}8080{{- end -}}
{{- define "narrowlink.gatewayContainerPort" -}}8443{{- end -}}
{{/* Mount paths. */}}
{{- define "narrowlink.webhookCertDir" -}}/etc/narrowlink/webhook{{- end -}}
{{- define "narrowlink.gatewayTlsDir" -}}/tls{{- end -}}

{{/* Labels on every object. */}}
{{- define "narrowlink.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: narrowlink
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: narrowlink
{{- end -}}

{{/* Selector labels of a component: include "narrowlink.selectorLabels" (list . "operator") */}}
{{- define "narrowlink.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: narrowlink
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of a component's pods: stable across chart versions, so an upgrade alone restarts nothing. */}}
{{- define "narrowlink.podLabels" -}}
{{ include "narrowlink.selectorLabels" . }}
app.kubernetes.io/part-of: narrowlink
{{- end -}}

{{/* Labels of a component's objects: common labels + component. */}}
{{- define "narrowlink.componentLabels" -}}
{{ include "narrowlink.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Image reference of a component: include "narrowlink.image" (list . .Values.operator.image).
A tag starting with "sha256:" is used as a digest.
*/}}
{{- define "narrowlink.image" -}}
{{- $root := index . 0 -}}
{{- $override := index . 1 | default dict -}}
{{- $repository := $override.repository | default $root.Values.image.repository -}}
{{- $tag := $override.tag | default $root.Values.image.tag | default $root.Chart.AppVersion | toString -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" $repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "narrowlink.pullPolicy" -}}
{{- $root := index . 0 -}}
{{- $override := index . 1 | default dict -}}
{{- $override.pullPolicy | default $root.Values.image.pullPolicy -}}
{{- end -}}

{{/* The webhook failurePolicy: explicit value, else Fail in strict mode, else Ignore. */}}
{{- define "narrowlink.failurePolicy" -}}
{{- if .Values.webhook.failurePolicy -}}
{{- .Values.webhook.failurePolicy -}}
{{- else if .Values.webhook.strict -}}
Fail
{{- else -}}
Ignore
{{- end -}}
{{- end -}}

{{/* The Secret the gateway serves TLS from. */}}
{{- define "narrowlink.gatewayTlsSecretName" -}}
{{- .Values.gateway.tls.existingSecret | default "narrowlink-gateway-tls" -}}
{{- end -}}

{{/* "true" when the cluster serves cert-manager's Certificate API (helm template: only with --api-versions). */}}
{{- define "narrowlink.certManagerServed" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate" -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the chart uses cert-manager for its own certificates: certManager.enabled true; or "auto" and
either the cluster serves cert-manager.io/v1 Certificate or gateway.tls.issuerRef asks for a cert-manager issuer.
(.Values.certManager.enabled is never tested for truth anywhere else: the string "auto" is truthy.)
*/}}
{{- define "narrowlink.certManager" -}}
{{- $enabled := .Values.certManager.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if $enabled -}}true{{- end -}}
{{- else if or (include "narrowlink.certManagerServed" .) .Values.gateway.tls.issuerRef.name -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when the chart renders the gateway Certificate. */}}
{{- define "narrowlink.gatewayCertificate" -}}
{{- if and (not .Values.gateway.tls.existingSecret) (include "narrowlink.certManager" .) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the operator issues the gateway certificate from its own CA (no cert-manager, no Secret given). */}}
{{- define "narrowlink.operatorGatewayTls" -}}
{{- if and (not .Values.gateway.tls.existingSecret) (not (include "narrowlink.certManager" .)) -}}true{{- end -}}
{{- end -}}

{{/* The operator's CA Secret without cert-manager (same name and layout as cert-manager's CA Secret). */}}
{{- define "narrowlink.operatorCaSecretName" -}}
{{- include "narrowlink.caName" . -}}
{{- end -}}

{{/* The in-cluster URL of the gateway, what injected sidecars dial unless sidecar.gatewayUrl is set. */}}
{{- define "narrowlink.sidecarGatewayUrl" -}}
{{- if .Values.sidecar.gatewayUrl -}}
{{- .Values.sidecar.gatewayUrl -}}
{{- else -}}
{{- printf "wss://%s.%s.svc:%d" (include "narrowlink.gatewayName" .) .Release.Namespace (int .Values.gateway.service.port) -}}
{{- end -}}
{{- end -}}

{{/*
PodDisruptionBudget apiVersion: policy/v1 from Kubernetes 1.21, policy/v1beta1 on 1.20, empty when the
cluster serves neither (then no PDB is rendered).
*/}}
{{- define "narrowlink.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else if .Capabilities.APIVersions.Has "policy/v1beta1" -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/* Pod-level security context shared by the operator and the gateway. */}}
{{- define "narrowlink.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context shared by the operator and the gateway. */}}
{{- define "narrowlink.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Preferred anti-affinity over nodes for a component, used when the values give no affinity. */}}
{{- define "narrowlink.defaultAffinity" -}}
{{- $root := index . 0 -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "narrowlink.selectorLabels" (list $root (index . 1)) | nindent 12 }}
{{- end -}}

{{/* Chart-level checks that a schema cannot express. */}}
{{- define "narrowlink.validate" -}}
{{- if and .Values.gateway.tls.issuerRef.name (eq (toString .Values.certManager.enabled) "false") -}}
{{- fail "gateway.tls.issuerRef needs certManager.enabled=true (the chart renders a cert-manager Certificate for it); or set gateway.tls.existingSecret" -}}
{{- end -}}
{{- if and .Values.sidecar.distributeCa (not .Values.sidecar.caConfigMap) -}}
{{- fail "sidecar.distributeCa needs sidecar.caConfigMap (the ConfigMap name the operator writes); set distributeCa=false for system CAs only" -}}
{{- end -}}
{{- if and .Values.gateway.tls.issuerRef.name .Values.gateway.tls.existingSecret -}}
{{- fail "set either gateway.tls.issuerRef or gateway.tls.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.gateway.tls.issuerRef.name (not .Values.gateway.tls.dnsNames) -}}
{{- fail "gateway.tls.issuerRef needs gateway.tls.dnsNames: a public issuer cannot certify the in-cluster Service names" -}}
{{- end -}}
{{- /* cert-manager detection: one line, naming the value that needs it and the way out. */ -}}
{{- if not (or .Values.certManager.skipCheck (include "narrowlink.certManagerServed" .)) -}}
{{- $needs := "" -}}
{{- if eq (toString .Values.certManager.enabled) "true" -}}
{{- $needs = "certManager.enabled=true" -}}
{{- else if .Values.gateway.tls.issuerRef.name -}}
{{- $needs = printf "gateway.tls.issuerRef (%s)" .Values.gateway.tls.issuerRef.name -}}
{{- else if .Values.issuer.defaultIssuer.name -}}
{{- $needs = printf "issuer.defaultIssuer (%s)" .Values.issuer.defaultIssuer.name -}}
{{- end -}}
{{- if $needs -}}
{{- fail (printf "%s needs cert-manager, but this cluster does not serve cert-manager.io/v1 Certificate: install cert-manager first, or unset it (certManager.enabled=auto uses the operator's own CA); for helm template without a cluster pass --api-versions cert-manager.io/v1/Certificate or set certManager.skipCheck=true" $needs) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Ed25519 public key (SPKI PEM) of a PKCS#8 Ed25519 private key PEM. Sprig has no function for it, but
genSelfSignedCertWithKey puts the public key into a certificate, and an Ed25519 SubjectPublicKeyInfo is always
the 12 bytes 30 2a 30 05 06 03 2b 65 70 03 21 00 followed by the 32-byte key: cut it out of the DER.
The test checks the result against Node's crypto.createPublicKey.
*/}}
{{- define "narrowlink.ed25519PublicKey" -}}
{{- $cert := genSelfSignedCertWithKey "narrowlink-signing-key" nil nil 1 . -}}
{{- $der := $cert.Cert | replace "-----BEGIN CERTIFICATE-----" "" | replace "-----END CERTIFICATE-----" "" | nospace | b64dec -}}
{{- $prefix := "\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00" -}}
{{- $parts := splitList $prefix $der -}}
{{- if ne (len $parts) 2 -}}
{{- fail "signingKey: could not derive the Ed25519 public key from private.pem" -}}
{{- end -}}
{{- $spki := printf "%s%s" $prefix (substr 0 32 (index $parts 1)) -}}
{{- if ne (len $spki) 44 -}}
{{- fail "signingKey: the Ed25519 public key is truncated" -}}
{{- end -}}
-----BEGIN PUBLIC KEY-----
{{ b64enc $spki }}
-----END PUBLIC KEY-----
{{ end -}}
