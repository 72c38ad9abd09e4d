import subprocess, re, sys, collections
obj = sys.argv[1]
txt = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True).stdout
funcs = re.split(r"\n(?=[0-9a-f]+ <)", txt)
def cat(m, ops):
    if re.match(r"vcvt|vextract|vinsert", m): return "cvt/ext/ins"
    if re.match(r"vperm|vshuf|vunpck|vpermt2", m): return "permute"
    if re.match(r"vmov|vbroadcast", m):
        return "spill/reload" if "rsp" in ops or "rbp" in ops else "move/load/store"
    if re.match(r"vcmp|kor|kand|kmov|ktest|kortest|knot|kxnor|vpmov", m): return "cmp/mask"
    if re.match(r"v.*pd$|v.*sd$", m): return "double arith"
    if re.match(r"v.*ps$|v.*ss$|vrndscale|vgetexp|vgetmant|vpslld|vpaddd|vcvttps|vpsub|vpand|vpor|vpxor|vscalef|vrcp14|vrsqrt14", m): return "float arith"
    if m.startswith("v") or m.startswith("k"): return "other vector"
    return "scalar"
for f in funcs:
    mm = re.match(r"[0-9a-f]+ <(\w+)>:", f)
    if not mm or mm.group(1) not in sys.argv[2:] and sys.argv[2:] != [] and not any(a == "all" for a in sys.argv[2:]): continue
    name = mm.group(1)
    c = collections.Counter()
    for line in f.splitlines()[1:]:
        p = line.split("\t")
        if len(p) < 2: continue
        ins = p[-1].strip(); parts = ins.split(None, 1)
        m = parts[0]; ops = parts[1] if len(parts) > 1 else ""
        c[cat(m, ops)] += 1
    vec = sum(v for k, v in c.items() if k != "scalar")
    print(f"{name:18s} vec/16 rows {vec/2:6.1f}  " + "  ".join(f"{k} {v/2:.1f}" for k, v in sorted(c.items())))
