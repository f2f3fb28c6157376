#!/usr/bin/env python3
"""Fails on any import cycle between the modules of a workspace crate, and on a forbidden
folder edge (relay-broker's data plane reaching into identity).

A module is a source file (`foo.rs`, or `foo/mod.rs` for the folder `foo`). Module A depends
on module B when A names a path into B: `use crate::b::...`, `crate::b::Item` in code, or
`super::...` resolved against A's place. A path is charged to the deepest module it names,
so `crate::store::Record` (defined in store/mod.rs) points at `store`, and
`crate::store::sqlite::open` at `store::sqlite`. `mod` declarations are not dependencies,
nor is a folder's `pub use` of its own children (the folder is their facade).

The rule checked: in every folder (the crate root included), the modules side by side
(files and subfolders) depend on each other one way only. An edge deep inside two
siblings counts as an edge between the siblings; an edge between a module and its own
ancestor does not count (a folder's mod.rs and its children are one unit).
Inline `#[cfg(test)] mod tests` blocks are skipped: tests may look anywhere.

    .ci/module-cycles.py            # every crate of the workspace
    .ci/module-cycles.py relay-broker
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = [
    "relay-core", "relay-io", "relay-cli", "relay-broker", "relay-listener",
    "relay-sender", "benches", "tests", "examples",
]
# (from, to) folder prefixes a crate must never connect, whatever the cycle check says.
FORBIDDEN = {
    "relay-broker": [("relay", "identity"), ("seams", "relay"), ("seams", "identity"),
                     ("store", "relay"), ("store", "identity"), ("identity", "relay")],
}


def strip(text):
    """Source without comments, string and char literals (they may contain `crate::`)."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def drop_test_modules(text):
    """Removes `#[cfg(test)] mod name { ... }` blocks by brace matching."""
    out, i = [], 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"as\w+$", "", tree)]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    paths = []
    for p in parts:
        if p:
            for sub in expand_use_tree(p):
                paths.append(prefix + sub if sub != "self" else prefix.rstrip(":"))
    return paths


def modules_of(src):
    """Maps module path tuples to file paths, from the file tree under src/."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            if parts and parts[0] == "bin":
                continue  # binaries are crates of their own
            if rel == "main.rs" and os.path.exists(os.path.join(src, "lib.rs")):
                continue  # the binary beside a library is a crate of its own
            mods[tuple(parts)] = os.path.join(dirpath, f)
    return mods


def resolve(path, here, mods):
    """The deepest known module a path names, or None when it leaves the crate."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        # Module paths, not files: `self` is this module, each `super` one level up.
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    best = None
    for k in range(len(segs) + 1):
        cand = tuple(base + segs[:k])
        if cand in mods:
            best = cand
    return best


def edges_of(crate):
    src = os.path.join(ROOT, crate, "src")
    if not os.path.isdir(src):
        return {}, {}
    mods = modules_of(src)
    edges = {m: set() for m in mods}
    for mod, file in mods.items():
        text = drop_test_modules(strip(open(file, encoding="utf-8").read()))
        for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
            facade = m.group(1) is not None
            for p in expand_use_tree(m.group(2)):
                head = p.split("::")[0]
                if head not in ("crate", "super", "self"):
                    p = "self::" + p  # a child by its bare name; other crates resolve to None
                target = resolve(p, mod, mods)
                if target is None or target == mod:
                    continue
                if facade and target[: len(mod)] == mod:
                    continue  # a folder re-exporting its children
                edges[mod].add(target)
        # Paths in code, outside `use` lines: `crate::`, `super::`, and a child module by its
        # bare name (`server::serve` in lib.rs).
        body = re.sub(r"\buse\s+[^;]+;", "", text)
        children = {m[-1] for m in mods if len(m) == len(mod) + 1 and m[: len(mod)] == mod}
        for m in re.finditer(r"(?<![:\w])(\w+)((?:::\w+)+)", body):
            if m.group(1) in children:
                target = resolve("self::" + m.group(0), mod, mods)
                if target is not None and target != mod:
                    edges[mod].add(target)
        for m in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", body):
            target = resolve(m.group(1), mod, mods)
            if target is not None and target != mod:
                edges[mod].add(target)
    return mods, edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def sibling_edges(edges):
    """Each edge lifted to the children of the folder both ends share: `relay::connect ->
    relay::standby::early` becomes `relay::connect -> relay::standby`. An edge between a
    module and its own ancestor is dropped: a folder's mod.rs and its children are one unit
    (they may use each other, as `use super::*` does); the siblings of every folder must form
    a chain that points one way."""
    lifted = {}
    for a, targets in edges.items():
        for b in targets:
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            if n == len(a) or n == len(b):
                continue
            lifted.setdefault(a[: n + 1], set()).add(b[: n + 1])
            lifted.setdefault(b[: n + 1], set())
    return lifted


def name(mod):
    return "::".join(mod) or "crate"


def self_test():
    """The check must fail when a cycle is put back: a throwaway crate with one."""
    import tempfile
    global ROOT
    saved = ROOT
    with tempfile.TemporaryDirectory() as tmp:
        ROOT = tmp
        os.makedirs(os.path.join(tmp, "demo", "src", "plane"))
        files = {
            "lib.rs": "mod a;\nmod b;\nmod plane;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "pub struct B;\nfn f() { let _ = crate::a::A; }\n",
            "plane/mod.rs": "mod x;\nmod y;\npub use x::X;\n",
            "plane/x.rs": "use super::y::{self, Y};\npub struct X;\n",
            "plane/y.rs": "pub struct Y;\n#[cfg(test)]\nmod tests { use super::super::x::X; }\n",
        }
        for name, text in files.items():
            with open(os.path.join(tmp, "demo", "src", name), "w") as f:
                f.write(text)
        _, edges = edges_of("demo")
        found = cycles(sibling_edges(edges))
        ROOT = saved
    assert found == [[("a",), ("b",)]], f"self-test: expected the a <-> b cycle only, got {found}"


def main():
    self_test()
    crates = sys.argv[1:] or CRATES
    failed = False
    for crate in crates:
        mods, edges = edges_of(crate)
        edges_up = sibling_edges(edges)
        for comp in cycles(edges_up):
            failed = True
            members = set(comp)
            print(f"{crate}: import cycle between {', '.join(name(m) for m in comp)}")
            for a in comp:
                for b in sorted(edges_up[a] & members):
                    print(f"    {name(a)} -> {name(b)}")
        for a, targets in edges.items():
            for b in targets:
                for frm, to in FORBIDDEN.get(crate, []):
                    if a[:1] == (frm,) and b[:1] == (to,):
                        failed = True
                        print(f"{crate}: forbidden edge {name(a)} -> {name(b)} ({frm}/ must not use {to}/)")
    if failed:
        sys.exit(1)
    print(f"no import cycles in {', '.join(crates)}")


if __name__ == "__main__":
    main()
