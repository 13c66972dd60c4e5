// The layer rules of src/ (src/README.md): every folder's README names, on a line
// "May include: a, b", the folders its files may include besides its own. This fails when a
// file includes a folder not on its list, when an include names no folder, when the lists
// themselves form a circle, or when the modules (a .c/.h pair) of one folder include each
// other in a circle (a header with no .c of its own counts as the includes it makes).
//
//   node tests/layers/check.mjs [SOURCE_DIR [BUILD_DIR]]
//
// With BUILD_DIR (a CMake build of chatgw), it also reads the compiled objects
// with nm and checks the calls themselves: a module may use only symbols defined in its own
// layer or the layers it may include, and no two modules use each other, directly or around a
// longer circle, except within one folder's "One unit:" line of its README.
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const src = join(process.argv[2] || join(dirname(fileURLToPath(import.meta.url)), '../..'), 'src');
const build = process.argv[3] || null;
const errors = [];
const allowed = new Map();
const units = []; // sets of "folder/module" that may use each other
const folders = readdirSync(src, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
for (const f of folders) {
  const readme = join(src, f, 'README.md');
  if (!existsSync(readme)) { errors.push(`src/${f}: no README.md`); continue; }
  const text = readFileSync(readme, 'utf8');
  const m = text.match(/^May include: *(.*)$/m);
  if (!m) { errors.push(`src/${f}/README.md: no "May include:" line`); continue; }
  const list = m[1].replace(/\.$/, '').split(/[ ,]+/).filter((x) => x && x !== 'nothing');
  for (const x of list) if (!folders.includes(x)) errors.push(`src/${f}/README.md: unknown folder ${x}`);
  allowed.set(f, new Set(list));
  const unit = text.match(/^One unit: *(.*)$/m);
  if (unit) units.push(new Set(unit[1].replace(/\.$/, '').split(/[ ,]+/).filter(Boolean).map((m) => `${f}/${m}`)));
}
for (const f of readdirSync(src)) if (/\.[ch]$/.test(f)) errors.push(`src/${f}: not in a layer folder`);

// A circle in a graph of string -> Set(string), or null.
function circle(graph) {
  const state = new Map();
  const path = [];
  function visit(n) {
    state.set(n, 1); path.push(n);
    for (const m of graph.get(n) || []) {
      if (state.get(m) === 1) return [...path.slice(path.indexOf(m)), m];
      if (!state.get(m)) { const c = visit(m); if (c) return c; }
    }
    state.set(n, 2); path.pop();
    return null;
  }
  for (const n of graph.keys()) if (!state.get(n)) { const c = visit(n); if (c) return c; }
  return null;
}

const layerCircle = circle(allowed);
if (layerCircle) errors.push(`layer rules form a circle: ${layerCircle.join(' -> ')}`);

const includes = new Map(); // "folder/file" -> [included "folder/file.h"]
for (const f of allowed.keys()) {
  for (const file of readdirSync(join(src, f)).filter((x) => /\.[ch]$/.test(x))) {
    const list = [];
    readFileSync(join(src, f, file), 'utf8').split('\n').forEach((line, i) => {
      const m = line.match(/^\s*#\s*include\s+"([^"]+)"/);
      if (!m) return;
      const where = `src/${f}/${file}:${i + 1}`;
      const parts = m[1].split('/');
      if (parts.length !== 2) { errors.push(`${where}: "${m[1]}" names no layer folder`); return; }
      if (parts[0] !== f && !allowed.get(f).has(parts[0]))
        errors.push(`${where}: ${f} may not include ${parts[0]} ("${m[1]}"; src/${f}/README.md)`);
      list.push(m[1]);
    });
    includes.set(`${f}/${file}`, list);
  }
}
const mod = (file) => file.replace(/\.[ch]$/, '');
const hasC = (m) => includes.has(`${m}.c`);
// The modules a module depends on, a header of no module standing for what it includes.
function deps(m) {
  const out = new Set();
  const seen = new Set();
  const walk = (file) => {
    for (const h of includes.get(file) || []) {
      if (seen.has(h)) continue;
      seen.add(h);
      if (hasC(mod(h))) { if (mod(h) !== m) out.add(mod(h)); } else walk(h);
    }
  };
  walk(`${m}.c`); walk(`${m}.h`);
  return out;
}
const sameUnit = (a, b) => units.some((u) => u.has(a) && u.has(b));
function checkCircles(graph, what) {
  for (const [a, set] of graph) for (const b of [...set]) if (sameUnit(a, b)) set.delete(b);
  const c = circle(graph);
  if (c) errors.push(`${what} form a circle: ${c.join(' -> ')}`);
}
const modGraph = new Map();
for (const file of includes.keys()) if (file.endsWith('.c')) modGraph.set(mod(file), deps(mod(file)));
checkCircles(modGraph, 'includes between modules');

if (build) {
  const objectOf = (m) => [`chatgw_${m.split('/')[0]}`, 'chatgw'].map((t) => join(build, 'CMakeFiles', `${t}.dir`, 'src', `${m}.c.o`)).find(existsSync);
  const defined = new Map(); // symbol -> module
  const undef = new Map();   // module -> Set(symbol)
  for (const m of modGraph.keys()) {
    const o = objectOf(m);
    if (!o) { errors.push(`src/${m}.c: no object in ${build} (build first)`); continue; }
    undef.set(m, new Set());
    for (const line of execFileSync('nm', ['-g', o], { encoding: 'utf8' }).split('\n')) {
      const t = line.trim().split(/\s+/);
      if (t.length === 2 && t[0] === 'U') undef.get(m).add(t[1]);
      else if (t.length === 3 && t[1] !== 'U') defined.set(t[2], m);
    }
  }
  const callGraph = new Map();
  for (const [m, syms] of undef) {
    const uses = new Set();
    for (const s of syms) {
      const d = defined.get(s);
      if (!d || d === m) continue;
      const [from, to] = [m.split('/')[0], d.split('/')[0]];
      if (from !== to && !allowed.get(from)?.has(to)) errors.push(`src/${m}.c uses ${s} from src/${d}.c: ${from} may not use ${to}`);
      uses.add(d);
    }
    callGraph.set(m, uses);
  }
  checkCircles(callGraph, 'calls between modules');
}

if (errors.length) {
  for (const e of errors) console.error(e);
  process.exit(1);
}
console.log(`layers: ${allowed.size} folders, every include within its rules`);
