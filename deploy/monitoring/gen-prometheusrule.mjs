#!/usr/bin/env node
// Writes deploy/k8s/components/prometheus-operator/prometheusrule.yaml from alerts.yaml, the one
// source of truth for chatgw's alert rules: the PrometheusRule's spec is alerts.yaml itself,
// indented (comments included). No dependencies: `node deploy/monitoring/gen-prometheusrule.mjs`.
// With --check it writes nothing and exits 1 when the committed file differs (tests/k8s runs it).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const SOURCE = path.join(here, 'alerts.yaml');
const TARGET = path.resolve(here, '..', 'k8s', 'components', 'prometheus-operator', 'prometheusrule.yaml');

export function render(alertsText) {
  const lines = alertsText.replace(/\r\n/g, '\n').split('\n');
  // the header comment of alerts.yaml speaks of loading the file itself: leave it out
  let i = 0;
  while (i < lines.length && (lines[i].startsWith('#') || lines[i].trim() === '')) i++;
  if (!/^groups:\s*$/.test(lines[i] || '')) throw new Error('alerts.yaml: expected `groups:` after the header comment');
  const body = lines.slice(i).map((l) => (l.trim() === '' ? '' : `  ${l}`)).join('\n').replace(/\n*$/, '\n');
  return [
    '# GENERATED from deploy/monitoring/alerts.yaml by deploy/monitoring/gen-prometheusrule.mjs: edit',
    '# alerts.yaml, then run `node deploy/monitoring/gen-prometheusrule.mjs` (tests/k8s fails when',
    '# this file is stale). The rules of the chatgw-alerts ConfigMap, as a prometheus-operator',
    '# PrometheusRule; the component\'s kustomization.yaml sets the labels your Prometheus selects.',
    'apiVersion: monitoring.coreos.com/v1',
    'kind: PrometheusRule',
    'metadata:',
    '  name: chatgw',
    '  namespace: chatgw',
    '  labels:',
    '    app.kubernetes.io/name: chatgw',
    '    app.kubernetes.io/component: monitoring',
    '    app.kubernetes.io/part-of: chatgw',
    'spec:',
    body,
  ].join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const want = render(fs.readFileSync(SOURCE, 'utf8'));
  if (process.argv.includes('--check')) {
    const have = fs.existsSync(TARGET) ? fs.readFileSync(TARGET, 'utf8') : '';
    if (have !== want) {
      console.error(`${path.relative(process.cwd(), TARGET)} is stale: run node deploy/monitoring/gen-prometheusrule.mjs`);
      process.exit(1);
    }
  } else {
    fs.writeFileSync(TARGET, want);
    console.log(`wrote ${path.relative(process.cwd(), TARGET)}`);
  }
}
