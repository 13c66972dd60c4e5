// The Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
// as the built-in PodSecurity admission checks them at version "latest" (Kubernetes 1.30+): the
// baseline and restricted profiles, on a pod spec. Offline, so that a manifest that the API
// server would refuse to run in its namespace fails in `make test` instead of on the cluster
// (the Deployment is accepted, its ReplicaSet never gets a pod).
//
// checkPodSpec(spec, level, metadata) returns the violations, each {level, rule, where, detail}.
// podTemplates(obj) finds every pod spec inside a rendered object (Deployment, DaemonSet,
// StatefulSet, ReplicaSet, Job, CronJob, Pod, or any custom kind that embeds a pod template).

export const LEVELS = ['privileged', 'baseline', 'restricted'];
const LABEL = 'pod-security.kubernetes.io/';

// baseline: capabilities beyond the container runtime's default set are forbidden
const BASELINE_CAPS = new Set(['AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD',
  'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT']);
// baseline: the namespaced "safe" sysctls
const SAFE_SYSCTLS = new Set(['kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range',
  'net.ipv4.ip_unprivileged_port_start', 'net.ipv4.tcp_syncookies', 'net.ipv4.ping_group_range',
  'net.ipv4.ip_local_reserved_ports', 'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout',
  'net.ipv4.tcp_keepalive_intvl', 'net.ipv4.tcp_keepalive_probes']);
const SELINUX_TYPES = new Set(['', 'container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']);
// restricted: the only volume types allowed
const RESTRICTED_VOLUMES = new Set(['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral',
  'persistentVolumeClaim', 'projected', 'secret']);

/** Every container of a pod spec with a printable place: containers, initContainers, ephemeralContainers. */
function allContainers(spec) {
  const out = [];
  for (const field of ['initContainers', 'containers', 'ephemeralContainers']) {
    for (const c of spec[field] || []) out.push({ c, where: `${field}[${c.name}]` });
  }
  return out;
}

/**
 * The violations of a pod spec against `level` ('privileged' | 'baseline' | 'restricted').
 * `metadata` is the pod template's metadata (for the AppArmor annotations).
 */
export function checkPodSpec(spec, level, metadata = {}) {
  if (!LEVELS.includes(level)) throw new Error(`unknown Pod Security level ${JSON.stringify(level)}`);
  const v = [];
  if (level === 'privileged') return v;
  const bad = (lvl, rule, where, detail) => v.push({ level: lvl, rule, where, detail });
  const pod = spec.securityContext || {};
  const containers = allContainers(spec);

  // ---- baseline (also part of restricted)
  for (const f of ['hostNetwork', 'hostPID', 'hostIPC']) {
    if (spec[f] === true) bad('baseline', 'hostNamespaces', 'spec', `${f}: true`);
  }
  if (pod.windowsOptions?.hostProcess === true) bad('baseline', 'hostProcess', 'spec.securityContext', 'windowsOptions.hostProcess: true');
  for (const vol of spec.volumes || []) {
    if (vol.hostPath) bad('baseline', 'hostPathVolumes', `volumes[${vol.name}]`, `hostPath ${vol.hostPath.path}`);
  }
  const seLinux = (ctx, where) => {
    const o = ctx?.seLinuxOptions;
    if (!o) return;
    if (!SELINUX_TYPES.has(o.type ?? '')) bad('baseline', 'seLinuxOptions', where, `seLinuxOptions.type ${o.type}`);
    if (o.user) bad('baseline', 'seLinuxOptions', where, `seLinuxOptions.user ${o.user}`);
    if (o.role) bad('baseline', 'seLinuxOptions', where, `seLinuxOptions.role ${o.role}`);
  };
  seLinux(pod, 'spec.securityContext');
  const appArmor = (ctx, where) => {
    const t = ctx?.appArmorProfile?.type;
    if (t !== undefined && t !== 'RuntimeDefault' && t !== 'Localhost') bad('baseline', 'appArmorProfile', where, `appArmorProfile.type ${t}`);
  };
  appArmor(pod, 'spec.securityContext');
  for (const [k, val] of Object.entries(metadata?.annotations || {})) {
    if (k.startsWith('container.apparmor.security.beta.kubernetes.io/') && val !== 'runtime/default' && !String(val).startsWith('localhost/')) {
      bad('baseline', 'appArmorProfile', `annotation ${k}`, `AppArmor profile ${val}`);
    }
  }
  if (pod.seccompProfile?.type === 'Unconfined') bad('baseline', 'seccompProfile', 'spec.securityContext', 'seccompProfile.type Unconfined');
  for (const s of pod.sysctls || []) {
    if (!SAFE_SYSCTLS.has(s.name)) bad('baseline', 'sysctls', 'spec.securityContext', `sysctl ${s.name} is not in the safe set`);
  }
  for (const { c, where } of containers) {
    const sc = c.securityContext || {};
    if (sc.privileged === true) bad('baseline', 'privileged', where, 'securityContext.privileged: true');
    if (sc.windowsOptions?.hostProcess === true) bad('baseline', 'hostProcess', where, 'windowsOptions.hostProcess: true');
    for (const cap of sc.capabilities?.add || []) {
      if (!BASELINE_CAPS.has(cap)) bad('baseline', 'capabilities', where, `capabilities.add ${cap}`);
    }
    for (const p of c.ports || []) {
      if (p.hostPort) bad('baseline', 'hostPorts', where, `hostPort ${p.hostPort} (containerPort ${p.containerPort})`);
    }
    seLinux(sc, where);
    appArmor(sc, where);
    if (sc.procMount !== undefined && sc.procMount !== 'Default') bad('baseline', 'procMount', where, `procMount ${sc.procMount}`);
    if (sc.seccompProfile?.type === 'Unconfined') bad('baseline', 'seccompProfile', where, 'seccompProfile.type Unconfined');
  }
  if (level === 'baseline') return v;

  // ---- restricted
  for (const vol of spec.volumes || []) {
    const types = Object.keys(vol).filter((k) => k !== 'name');
    for (const t of types) {
      if (!RESTRICTED_VOLUMES.has(t) && t !== 'hostPath') bad('restricted', 'volumeTypes', `volumes[${vol.name}]`, `volume type ${t}`);
    }
  }
  const podNonRoot = pod.runAsNonRoot === true;
  if (pod.runAsNonRoot === false) bad('restricted', 'runAsNonRoot', 'spec.securityContext', 'runAsNonRoot: false');
  if (pod.runAsUser === 0) bad('restricted', 'runAsUser', 'spec.securityContext', 'runAsUser: 0');
  const podSeccomp = pod.seccompProfile?.type;
  const seccompOk = (t) => t === 'RuntimeDefault' || t === 'Localhost';
  for (const { c, where } of containers) {
    const sc = c.securityContext || {};
    if (sc.allowPrivilegeEscalation !== false) bad('restricted', 'allowPrivilegeEscalation', where, `allowPrivilegeEscalation is ${sc.allowPrivilegeEscalation ?? 'unset'}, must be false`);
    if (sc.runAsNonRoot === false) bad('restricted', 'runAsNonRoot', where, 'runAsNonRoot: false');
    else if (sc.runAsNonRoot !== true && !podNonRoot) bad('restricted', 'runAsNonRoot', where, 'runAsNonRoot is set neither on the pod nor on the container');
    if (sc.runAsUser === 0) bad('restricted', 'runAsUser', where, 'runAsUser: 0');
    const t = sc.seccompProfile?.type;
    if (t !== undefined) {
      if (!seccompOk(t) && t !== 'Unconfined') bad('restricted', 'seccompProfile', where, `seccompProfile.type ${t}`);
    } else if (!seccompOk(podSeccomp)) {
      bad('restricted', 'seccompProfile', where, 'seccompProfile (RuntimeDefault or Localhost) is set neither on the pod nor on the container');
    }
    const drop = sc.capabilities?.drop || [];
    if (!drop.includes('ALL')) bad('restricted', 'capabilities', where, 'capabilities.drop must include ALL');
    for (const cap of sc.capabilities?.add || []) {
      if (cap !== 'NET_BIND_SERVICE') bad('restricted', 'capabilities', where, `capabilities.add ${cap} (only NET_BIND_SERVICE)`);
    }
  }
  return v;
}

/**
 * Every pod spec inside a rendered object: [{path, spec, metadata}]. Looks for the shape of a
 * pod template anywhere (an object with a `spec.containers` array), so custom kinds that embed
 * one are checked too.
 */
export function podTemplates(obj) {
  const out = [];
  if (obj?.kind === 'Pod' && obj.spec?.containers) return [{ path: 'spec', spec: obj.spec, metadata: obj.metadata || {} }];
  const walk = (node, p) => {
    if (!node || typeof node !== 'object') return;
    if (Array.isArray(node)) { node.forEach((x, i) => walk(x, `${p}[${i}]`)); return; }
    if (node.spec && Array.isArray(node.spec.containers)) {
      out.push({ path: `${p}.spec`.replace(/^\./, ''), spec: node.spec, metadata: node.metadata || {} });
      return;
    }
    for (const [k, x] of Object.entries(node)) if (k !== 'metadata' && k !== 'data' && k !== 'stringData') walk(x, `${p}.${k}`);
  };
  walk(obj.spec, 'spec');
  return out;
}

/** The Pod Security labels of a Namespace object: {enforce, audit, warn} (undefined when unset). */
export function namespaceLevels(ns) {
  const l = ns?.metadata?.labels || {};
  return { enforce: l[`${LABEL}enforce`], audit: l[`${LABEL}audit`], warn: l[`${LABEL}warn`] };
}

/** Formats a violation for an assertion message. */
export function describeViolation(objRef, t, x) {
  return `${objRef} ${t.path} ${x.where}: ${x.rule} (${x.level}): ${x.detail}`;
}
