// The deploy path from git (issue 17, item 1), checked offline:
// - deploy.yml: a push that changes only scripts/ runs `chatgw check` and the Lua specs, then
//   applies the policy ConfigMap alone (no image, no rollout, no Secret); image builds and
//   rollouts are gated on code changes, as classified by .github/deploy-changes.sh (run here on
//   sample pushes);
// - the policy ConfigMap keeps one name forever (no hash suffix), so that apply changes it in
//   place and kubelet's live reload picks it up;
// - no rendered overlay carries a Redis password: the Secret is created once in the cluster;
// - the policy docs' kubectl commands name the namespace, and the by-hand command builds the
//   same ConfigMap as kustomize (run here with --dry-run=client, no cluster needed).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SRC, OVERLAYS, renderOverlay, findObj, gatewayWorkload, scriptFiles, run, which, parseDocs, YAML } from './lib.mjs';

const WF = path.join(SRC, '.github', 'workflows', 'deploy.yml');
const wf = YAML.parse(fs.readFileSync(WF, 'utf8'));
const CHANGES = path.join(SRC, '.github', 'deploy-changes.sh');

const needsOf = (job) => [].concat(job.needs || []);
const runs = (job) => (job.steps || []).map((s) => s.run || '');
const stepIndex = (job, re) => (job.steps || []).findIndex((s) => re.test(s.run || ''));

/** Objects of `objs` that a `k=v[,k=v]` label selector (as given to kubectl -l) matches. */
function select(objs, selector) {
  const terms = selector.split(',').map((t) => {
    const m = /^\s*([^=!\s]+)\s*(==|=|!=)\s*(\S*)\s*$/.exec(t);
    assert.ok(m, `unsupported selector term ${t}`);
    return { k: m[1], neg: m[2] === '!=', v: m[3] };
  });
  return objs.filter((o) => terms.every(({ k, neg, v }) => ((o.metadata?.labels || {})[k] === v) !== neg));
}

/** Runs .github/deploy-changes.sh on a list of changed paths; returns {code, policy}. */
function classify(files) {
  const r = run('sh', [CHANGES], { input: files.map((f) => `${f}\n`).join('') });
  assert.equal(r.code, 0, r.stderr);
  const out = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split('=')));
  return { code: out.code === 'true', policy: out.policy === 'true' };
}

describe('deploy.yml: what a push deploys', () => {
  it('a changes job classifies the push with .github/deploy-changes.sh and exports code and policy', () => {
    const ch = wf.jobs.changes;
    assert.ok(ch, 'a changes job');
    assert.ok(ch.outputs?.code && ch.outputs?.policy, 'outputs code and policy');
    assert.ok(runs(ch).some((r) => /git diff --name-only "\$BEFORE" "\$GITHUB_SHA"/.test(r) && /deploy-changes\.sh/.test(r)),
      'the push range goes through deploy-changes.sh');
    assert.equal(ch.steps.find((s) => s.uses?.startsWith('actions/checkout'))?.with?.['fetch-depth'], 0, 'full history for the diff');
  });

  it('deploy-changes.sh: scripts/ alone is policy; src, web, build files and manifests are code; docs and tests are neither', () => {
    assert.deepEqual(classify(['scripts/settings.lua']), { code: false, policy: true });
    assert.deepEqual(classify(['scripts/policy.lua', 'scripts/kustomization.yaml', 'docs/writing-policy.md', 'tests/lua/policy_spec.lua']),
      { code: false, policy: true });
    assert.deepEqual(classify(['docs/deploy-kubernetes.md', 'README.md', 'tests/k8s/lib.mjs', '.github/workflows/ci.yml']),
      { code: false, policy: false });
    for (const f of ['src/server.c', 'src/lua/sandbox.c', 'web/index.html', 'CMakeLists.txt', 'Dockerfile', '.dockerignore',
      'deploy/k8s/base/deployment.yaml', 'deploy/k8s/overlays/prod/kustomization.yaml', '.github/workflows/deploy.yml',
      '.github/deploy-changes.sh']) {
      assert.equal(classify([f]).code, true, `${f} is code`);
    }
    assert.deepEqual(classify(['scripts/rooms.lua', 'src/ws.c']), { code: true, policy: true });
    assert.deepEqual(classify([]), { code: false, policy: false });
  });

  it('everything the image is built from (.dockerignore allow-list) counts as code, except the policy', () => {
    const allowed = fs.readFileSync(path.join(SRC, '.dockerignore'), 'utf8').split('\n')
      .filter((l) => l.startsWith('!')).map((l) => l.slice(1).trim());
    assert.ok(allowed.length > 0);
    for (const a of allowed) {
      const sample = a.replace(/\*\*?/g, 'x').replace(/\/$/, '/x');
      const c = classify([sample]);
      if (a.startsWith('scripts/')) assert.deepEqual(c, { code: false, policy: true }, `${a}: the policy path`);
      else assert.equal(c.code, true, `${a} (${sample}) goes into the image: a change must build one`);
    }
  });

  it('image builds, tests and rollouts run only for code changes', () => {
    const gated = (name) => {
      const j = wf.jobs[name];
      assert.ok(j, `job ${name}`);
      assert.ok(needsOf(j).includes('changes'), `${name} needs changes`);
      assert.match(String(j.if || ''), /needs\.changes\.outputs\.code == 'true'/, `${name} runs for code changes only`);
      return j;
    };
    gated('test');
    const image = gated('image');
    assert.ok(needsOf(image).includes('test'), 'the image waits for the tests');
    assert.ok(image.steps.some((s) => /docker\/build-push-action/.test(s.uses || '')));
    const deploy = gated('deploy');
    assert.ok(needsOf(deploy).includes('image'));
    // the only jobs that build images or roll pods are the gated ones
    for (const [name, j] of Object.entries(wf.jobs)) {
      if (['image', 'deploy', 'test'].includes(name)) continue;
      const text = JSON.stringify(j);
      assert.doesNotMatch(text, /build-push-action|docker build|kustomize edit set image|rollout (restart|status)|apply -k/,
        `${name} neither builds an image nor rolls pods`);
    }
  });

  it('the policy-only job runs chatgw check and busted, then applies the policy ConfigMap and nothing else', () => {
    const p = wf.jobs.policy;
    assert.ok(p, 'a policy job');
    assert.ok(needsOf(p).includes('changes'));
    assert.match(String(p.if), /needs\.changes\.outputs\.policy == 'true'/);
    assert.match(String(p.if), /needs\.changes\.outputs\.code != 'true'/, 'a push with code goes the full way instead');
    const build = stepIndex(p, /cmake --build build\b.*--target chatgw/);
    const check = stepIndex(p, /\.\/build\/chatgw check scripts\/?[\s)"]/);
    const specs = stepIndex(p, /^\s*busted --lua=lua5\.4 -C \. tests\/lua\s*$/m);
    const apply = stepIndex(p, /kubectl apply\b/);
    assert.ok(build >= 0, 'builds chatgw');
    assert.ok(check > build, 'chatgw check scripts/ after the build');
    assert.ok(specs >= 0, 'busted --lua=lua5.4 -C . tests/lua');
    assert.ok(apply > check && apply > specs, 'apply comes after the check and the specs');
    // steps run in order and a failing step stops the job: nothing may soften the checks
    for (const i of [check, specs]) assert.notEqual(p.steps[i]['continue-on-error'], true);
    for (const i of [check, specs]) assert.doesNotMatch(p.steps[i].run, /\|\|\s*true/);
    // GitHub's default `bash -e` has no pipefail: the workflow sets `shell: bash` (-eo pipefail)
    assert.equal(wf.defaults?.run?.shell, 'bash', 'pipefail in every run step');
    assert.equal(p.steps[check].shell ?? p.defaults?.run?.shell ?? 'bash', 'bash');
    // every kubectl apply/diff in the job is filtered by the policy selector
    const applies = runs(p).flatMap((r) => r.split('\n')).filter((l) => /kubectl (apply|diff)\b/.test(l));
    assert.ok(applies.length > 0);
    for (const l of applies) {
      assert.match(l, /-l "\$POLICY_SELECTOR"/, `filtered by the policy selector: ${l.trim()}`);
      assert.doesNotMatch(l, /\s-k\s/, `never the whole overlay: ${l.trim()}`);
    }
    const text = JSON.stringify(p);
    assert.doesNotMatch(text, /docker|build-push|REDIS_PASSWORD|redis\.env/i, 'no image, no Redis password');
    const commands = runs(p).flatMap((r) => r.split('\n')).filter((l) => !/^\s*(#|echo\b)/.test(l))
      .flatMap((l) => l.split(/\||&&/)).filter((l) => /\b(kubectl|kustomize)\s/.test(l));
    for (const c of commands) {
      assert.doesNotMatch(c, /set image|rollout|\bsecrets?\b|delete|scale|patch|replace|edit\b/, `no image, rollout or Secret: ${c.trim()}`);
    }
  });

  it('the policy selector picks the chatgw-policy ConfigMap alone, in every overlay', () => {
    const sel = wf.env?.POLICY_SELECTOR;
    assert.ok(sel, 'POLICY_SELECTOR at the workflow level');
    for (const o of OVERLAYS) {
      const picked = select(renderOverlay(o), sel).map((x) => `${x.kind}/${x.metadata.name}`);
      assert.deepEqual(picked, ['ConfigMap/chatgw-policy'], `${o}: ${sel}`);
    }
    // and the job refuses to apply if that ever changes
    assert.ok(runs(wf.jobs.policy).some((r) => /test "\$\(awk '\{print \$1\}' selected\.txt\)" = "configmap\/chatgw-policy"/.test(r)));
  });

  it('the policy ConfigMap keeps one name (no hash suffix): an apply changes it in place, pods do not roll', () => {
    const k = YAML.parse(fs.readFileSync(path.join(SRC, 'scripts', 'kustomization.yaml'), 'utf8'));
    assert.equal(k.generatorOptions?.disableNameSuffixHash, true);
    for (const o of OVERLAYS) {
      const objs = renderOverlay(o);
      const cm = findObj(objs, 'ConfigMap', 'chatgw-policy');
      assert.ok(cm, `${o}: ConfigMap chatgw-policy, unsuffixed`);
      assert.deepEqual(Object.keys(cm.data).sort(), scriptFiles(), `${o}: exactly the *.lua files`);
      const w = gatewayWorkload(objs);
      const vols = w.spec.template.spec.volumes.filter((v) => v.configMap && /^chatgw-policy/.test(v.configMap.name));
      assert.ok(vols.length > 0, `${o}: the workload mounts the policy`);
      for (const v of vols) assert.equal(v.configMap.name, 'chatgw-policy', `${o}: referenced by its fixed name`);
      // the pod template does not change when the policy does (no checksum annotation)
      const ann = JSON.stringify(w.spec.template.metadata?.annotations || {});
      assert.doesNotMatch(ann, /checksum|policy/i, `${o}: no annotation that would roll the pods on a policy change`);
    }
  });
});

describe('the Redis password never comes from the repository', () => {
  it('no committed placeholder file, no secretGenerator in any kustomization', () => {
    assert.ok(!fs.existsSync(path.join(SRC, 'deploy/k8s/base/redis.env')), 'deploy/k8s/base/redis.env is gone');
    const walk = (d) => fs.readdirSync(d, { withFileTypes: true })
      .flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
    const ks = walk(path.join(SRC, 'deploy')).concat([path.join(SRC, 'scripts', 'kustomization.yaml')])
      .filter((f) => path.basename(f) === 'kustomization.yaml');
    assert.ok(ks.length >= 4);
    for (const f of ks) {
      const k = YAML.parse(fs.readFileSync(f, 'utf8'));
      const redis = (k.secretGenerator || []).filter((g) => /redis/.test(g.name));
      assert.deepEqual(redis, [], `${path.relative(SRC, f)}: no generated Redis Secret`);
    }
  });

  for (const o of ['prod', 'budget']) {
    it(`${o}: renders no Redis Secret and no placeholder password; the workloads reference chatgw-redis by name`, () => {
      const objs = renderOverlay(o);
      assert.equal(objs.find((x) => x.kind === 'Secret' && /redis/.test(x.metadata.name)), undefined, 'no Redis Secret rendered');
      // every object but the policy's Lua sources (whose comments may show example values)
      const text = JSON.stringify(objs.filter((x) => !(x.kind === 'ConfigMap' && x.metadata.name === 'chatgw-policy')));
      assert.doesNotMatch(text, /change-me|changeme|placeholder-password/i);
      const b64 = Buffer.from('change-me').toString('base64');
      assert.ok(!text.includes(b64), 'not even base64-encoded');
      const refs = new Set();
      for (const w of objs.filter((x) => x.spec?.template?.spec)) {
        const pod = w.spec.template.spec;
        for (const v of pod.volumes || []) if (v.secret && /redis/.test(v.secret.secretName)) refs.add(v.secret.secretName);
        for (const c of pod.containers) {
          for (const e of c.env || []) {
            const r = e.valueFrom?.secretKeyRef;
            if (r && /redis/.test(r.name)) { refs.add(r.name); assert.equal(r.key, 'password'); }
          }
        }
      }
      assert.deepEqual([...refs], ['chatgw-redis'], 'one fixed Secret name, no hash suffix');
    });
  }

  it('the deploy workflow neither writes a password file nor needs a REDIS_PASSWORD secret; it checks the Secret exists', () => {
    const text = fs.readFileSync(WF, 'utf8');
    assert.doesNotMatch(text, /redis\.env|secrets\.REDIS_PASSWORD/);
    assert.ok(runs(wf.jobs.deploy).some((r) => /kubectl -n chatgw get secret chatgw-redis/.test(r)));
  });

  it('deploy-kubernetes.md documents creating the Secret once with kubectl', () => {
    const doc = fs.readFileSync(path.join(SRC, 'docs', 'deploy-kubernetes.md'), 'utf8');
    assert.match(doc, /kubectl -n chatgw create secret generic chatgw-redis\s+\\?\s*--from-literal=password=/);
    assert.doesNotMatch(doc, /redis\.env/);
  });
});

describe('policy docs: namespace, by-hand command, auth example', () => {
  const DOCS = ['docs/writing-policy.md', 'docs/examples/auth/README.md', 'docs/policy-rollout.md'];
  /** The shell lines of the fenced sh blocks of a markdown file, continuation lines joined. */
  const shellCommands = (file) => {
    const text = fs.readFileSync(path.join(SRC, file), 'utf8');
    const out = [];
    for (const m of text.matchAll(/```(?:sh|bash|console)\n([\s\S]*?)```/g)) {
      out.push(...m[1].replace(/\\\n\s*/g, ' ').replace(/\n\s*\|/g, ' |').split('\n').filter((l) => l.trim()));
    }
    return out;
  };

  for (const f of DOCS) {
    it(`${f}: every kubectl command names -n chatgw; no --from-file of the whole scripts/ folder`, () => {
      const cmds = shellCommands(f);
      const kubectl = cmds.flatMap((l) => l.split('|')).filter((p) => /\bkubectl\s/.test(p));
      assert.ok(kubectl.length > 0, `${f} has kubectl commands`);
      for (const k of kubectl) {
        if (/\bkubectl (kustomize|label --local)\b/.test(k)) continue; // offline, no namespace involved
        assert.match(k, /\s(-n|--namespace)[ =]chatgw\b/, `${f}: ${k.trim()}`);
      }
      for (const c of cmds) {
        assert.doesNotMatch(c, /--from-file=(\S*\/)?scripts\/?(\s|$)/, `scripts/ as a folder adds kustomization.yaml as a key: ${c}`);
        assert.doesNotMatch(c, /kubectl[^|]*(set image|rollout)/, `a policy change touches no image and rolls no pod: ${c}`);
      }
    });
  }

  it('writing-policy.md: the by-hand command builds the same ConfigMap as kustomize (dry-run)', () => {
    const cmd = shellCommands('docs/writing-policy.md').find((l) => /kubectl -n chatgw create configmap chatgw-policy/.test(l));
    assert.ok(cmd, 'a by-hand create configmap command');
    assert.match(cmd, /\| kubectl -n chatgw apply -f -\s*$/);
    assert.ok(which('kubectl'), 'kubectl on PATH');
    const offline = cmd.replace(/\| kubectl -n chatgw apply -f -\s*$/, '');
    const r = run('bash', ['-o', 'pipefail', '-c', offline], { env: { KUBECONFIG: '/nonexistent' } });
    assert.equal(r.code, 0, r.stderr);
    const [made] = parseDocs(r.stdout);
    const want = findObj(renderOverlay('prod'), 'ConfigMap', 'chatgw-policy');
    assert.equal(made.metadata.name, 'chatgw-policy');
    assert.equal(made.metadata.namespace, 'chatgw');
    assert.deepEqual(made.data, want.data, 'the same keys and contents as the kustomize render');
    assert.deepEqual(made.metadata.labels, want.metadata.labels, 'the same labels (the CI selector finds it)');
  });

  it('writing-policy.md: one way from git, one by hand, and one rollback command', () => {
    const text = fs.readFileSync(path.join(SRC, 'docs', 'writing-policy.md'), 'utf8');
    assert.match(text, /git revert/);
    assert.match(text, /policy-only|policy job/i);
    assert.match(text, /git restore --source=/);
  });

  it('auth README: says to list auth.lua in scripts/kustomization.yaml', () => {
    const text = fs.readFileSync(path.join(SRC, 'docs', 'examples', 'auth', 'README.md'), 'utf8');
    assert.match(text, /auth\.lua[^\n]*\n?[^\n]*scripts\/kustomization\.yaml|scripts\/kustomization\.yaml[^\n]*\n?[^\n]*auth\.lua/);
  });
});
