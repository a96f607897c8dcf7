{{/* Chart name. */}}
{{- define "btrfs-csi.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for every object. */}}
{{- define "btrfs-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "btrfs-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "btrfs-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: btrfs-csi
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "node"). */}}
{{- define "btrfs-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "btrfs-csi.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The driver image reference. */}}
{{- define "btrfs-csi.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* A sidecar image reference from an {repository, tag} map. */}}
{{- define "btrfs-csi.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Topology key reported by the driver. */}}
{{- define "btrfs-csi.topologyKey" -}}
{{- .Values.topologyKey | default (printf "topology.%s/node" .Values.driverName) -}}
{{- end -}}

{{/* Host directory holding the driver's CSI socket (kubelet reaches it here). */}}
{{- define "btrfs-csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{/* Socket path as seen by the kubelet, handed to the registrar. */}}
{{- define "btrfs-csi.registrationPath" -}}
{{- printf "%s/csi.sock" (include "btrfs-csi.pluginDir" .) -}}
{{- end -}}

{{/* ServiceAccount names, one per workload. */}}
{{- define "btrfs-csi.nodeServiceAccount" -}}
{{- printf "%s-node" (include "btrfs-csi.fullname" .) -}}
{{- end -}}
{{- define "btrfs-csi.resizerServiceAccount" -}}
{{- printf "%s-resizer" (include "btrfs-csi.fullname" .) -}}
{{- end -}}
{{- define "btrfs-csi.snapshotControllerServiceAccount" -}}
{{- printf "%s-snapshot-controller" (include "btrfs-csi.fullname" .) -}}
{{- end -}}

{{/*
Projected API credentials, mounted only into the containers that talk to the API server: pods
set automountServiceAccountToken false so the privileged driver container holds no token.
*/}}
{{- define "btrfs-csi.apiTokenVolume" -}}
- name: api-token
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end -}}
{{- define "btrfs-csi.apiTokenMount" -}}
- name: api-token
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end -}}

{{/* Security context of an unprivileged sidecar. */}}
{{- define "btrfs-csi.sidecarSecurityContext" -}}
# The driver's socket is root's with mode 0600: the sidecars connect as uid 0, holding no capability.
runAsUser: 0
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Secret holding the peer channel's CA and node certificates (peers.tls). */}}
{{- define "btrfs-csi.peerTlsSecret" -}}
{{- if eq .Values.peers.tls.mode "secret" -}}
{{- .Values.peers.tls.secretName -}}
{{- else -}}
{{- printf "%s-peer-tls" (include "btrfs-csi.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Pod network settings: the node's network namespace when .Values.hostNetwork is set. */}}
{{- define "btrfs-csi.hostNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end -}}

{{/* Explicit API server address for the containers that talk to it (.Values.apiServer). */}}
{{- define "btrfs-csi.apiServerEnv" -}}
{{- with .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.apiServer.port | quote }}
{{- end }}
{{- end -}}
